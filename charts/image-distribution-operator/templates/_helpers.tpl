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

{{/* Values the chart accepts but cannot honour fail here, naming the key. */}}
{{- define "ido.checks" -}}
{{- if .Values.certmanager.enable }}
{{- fail "certmanager.enable: the operator has no webhooks and serves metrics over plain HTTP, so there is no certificate for cert-manager to issue; set it false" }}
{{- end }}
{{- if and (include "ido.serviceMonitor" .) (not (include "ido.metricsService" .)) }}
{{- fail "prometheus.serviceMonitor.enabled needs the metrics Service: set metrics.service.enabled true" }}
{{- end }}
{{- end }}
