{{/* Name of every object of the chart (the original's). */}}
{{- define "ido.fullname" -}}
image-distribution-operator
{{- end }}

{{/* Namespace of the NodeImages: .Values.namespace, else the release namespace. */}}
{{- define "ido.imageNamespace" -}}
{{ .Values.namespace | default .Release.Namespace }}
{{- end }}

{{- define "ido.serviceAccountName" -}}
{{ .Values.serviceAccount.name | default (include "ido.fullname" .) }}
{{- end }}

{{- define "ido.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ido.fullname" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ido.labels" -}}
{{ include "ido.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
