{{/* Chart name, overridable with nameOverride. */}}
{{- define "ido.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of every object of the chart (the standard Helm pattern): fullnameOverride,
else the release name if it contains the chart name, else "<release>-<chart>";
truncated to 63 characters and trimmed of "-". With the release name
"image-distribution-operator" every object is named "image-distribution-operator"
(the original's names), and two releases never clash on cluster-scoped names.
*/}}
{{- define "ido.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The metrics Service's name: a DNS label, so 63 characters at most with its suffix. */}}
{{- define "ido.metricsServiceName" -}}
{{- printf "%s-metrics" (include "ido.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* Namespace of the NodeImages: .Values.namespace, else the release namespace. */}}
{{- define "ido.imageNamespace" -}}
{{ .Values.namespace | default .Release.Namespace }}
{{- end }}

{{- define "ido.serviceAccountName" -}}
{{ .Values.serviceAccount.name | default (include "ido.fullname" .) }}
{{- end }}

{{- define "ido.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ido.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ido.labels" -}}
{{ include "ido.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The switches, with the original chart's names (rbac.enable, metrics.enable,
prometheus.enable, networkPolicy.enable) honoured beside this chart's. Each prints "true"
or nothing, for `if`.
*/}}
{{- define "ido.rbac" -}}
{{- if and .Values.rbac.create (ne (toString (dig "enable" true .Values.rbac)) "false") }}true{{ end }}
{{- end }}

{{- define "ido.metricsService" -}}
{{- if and .Values.metrics.service.enabled (ne (toString (dig "enable" true .Values.metrics)) "false") }}true{{ end }}
{{- end }}

{{- define "ido.serviceMonitor" -}}
{{- if or .Values.prometheus.serviceMonitor.enabled (dig "enable" false .Values.prometheus) }}true{{ end }}
{{- end }}

{{- define "ido.networkPolicy" -}}
{{- if or .Values.networkPolicy.enabled (dig "enable" false .Values.networkPolicy) }}true{{ end }}
{{- end }}

{{/* The image cache's admission webhook: "true" with imageCache.enabled and imageCache.webhook.enabled. */}}
{{- define "ido.webhook" -}}
{{- if or (include "ido.cacheWebhook" .) (include "ido.upload" .) }}true{{ end }}
{{- end }}

{{/* The image cache's pod webhook. */}}
{{- define "ido.cacheWebhook" -}}
{{- if and .Values.imageCache.enabled .Values.imageCache.webhook.enabled }}true{{ end }}
{{- end }}

{{/* Disk uploads (the upload endpoint, the upload token webhook). */}}
{{- define "ido.upload" -}}
{{- if and .Values.diskImport.enabled .Values.diskImport.upload.enabled }}true{{ end }}
{{- end }}

{{/* The webhook's Service: a DNS label, so 63 characters at most with its suffix. */}}
{{- define "ido.webhookServiceName" -}}
{{- printf "%s-webhook" (include "ido.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The Secret holding the webhook's serving certificate (tls.crt, tls.key): the user's
(certificate.source secret), else <fullname>-webhook-cert, made by the chart (helm) or by
cert-manager (certManager).
*/}}
{{- define "ido.webhookCertSecretName" -}}
{{- if eq .Values.imageCache.webhook.certificate.source "secret" }}
{{- .Values.imageCache.webhook.certificate.secretName }}
{{- else }}
{{- printf "%s-webhook-cert" (include "ido.fullname" .) }}
{{- end }}
{{- end }}

{{/* The names the API server may call the webhook by: the Service's, as a YAML list. */}}
{{- define "ido.webhookDNSNames" -}}
{{- $svc := include "ido.webhookServiceName" . }}
- {{ $svc }}
- {{ $svc }}.{{ .Release.Namespace }}
- {{ $svc }}.{{ .Release.Namespace }}.svc
- {{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}

{{/* Values the chart accepts but cannot honour fail here, naming the key. */}}
{{- define "ido.checks" -}}
{{- if .Values.certmanager.enable }}
{{- fail "certmanager.enable: the original chart's certificate has no counterpart (metrics are served with a certificate the operator makes at start); set it false, and for the image cache's webhook use imageCache.webhook.certificate.source: certManager" }}
{{- end }}
{{- if and (include "ido.serviceMonitor" .) (not (include "ido.metricsService" .)) }}
{{- fail "prometheus.serviceMonitor.enabled needs the metrics Service: set metrics.service.enabled true" }}
{{- end }}
{{- if include "ido.webhook" . }}
{{- $cert := .Values.imageCache.webhook.certificate }}
{{- if eq $cert.source "secret" }}
{{- if not $cert.secretName }}
{{- fail "imageCache.webhook.certificate.secretName: name the kubernetes.io/tls Secret (in the release namespace) holding the webhook's certificate, as imageCache.webhook.certificate.source is secret" }}
{{- end }}
{{- if not $cert.caBundle }}
{{- fail "imageCache.webhook.certificate.caBundle: give the PEM CA certificate that signed the Secret's certificate, as imageCache.webhook.certificate.source is secret" }}
{{- end }}
{{- else }}
{{- if or $cert.secretName $cert.caBundle }}
{{- fail (printf "imageCache.webhook.certificate.secretName and caBundle are used only with imageCache.webhook.certificate.source secret (it is %s)" $cert.source) }}
{{- end }}
{{- end }}
{{- if and $cert.issuerRef (ne $cert.source "certManager") }}
{{- fail (printf "imageCache.webhook.certificate.issuerRef is used only with imageCache.webhook.certificate.source certManager (it is %s)" $cert.source) }}
{{- end }}
{{- if and $cert.issuerRef (not (dig "name" "" $cert.issuerRef)) }}
{{- fail "imageCache.webhook.certificate.issuerRef.name: name the cert-manager Issuer or ClusterIssuer (or leave issuerRef empty for a self-signed Issuer)" }}
{{- end }}
{{- end }}
{{- end }}
