{{/* Names are DNS labels: at most 63 characters. */}}
{{- define "modeldeploy.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modeldeploy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modeldeploy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modeldeploy.labels" -}}
{{ include "modeldeploy.selectorLabels" . }}
app.kubernetes.io/part-of: modeldeploy
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "modeldeploy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modeldeploy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "modeldeploy.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "modeldeploy.peeringEnabled" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{- define "modeldeploy.peeringName" -}}
{{- default (include "modeldeploy.fullname" .) .Values.peering.name -}}
{{- end -}}

{{/* The operator's command line, per the `modeldeploy operator` contract. */}}
{{- define "modeldeploy.operatorArgs" -}}
- operator
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace
- {{ . | quote }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
- --health-port
- {{ int .Values.healthPort | toString | quote }}
- --metrics-port
- {{ int .Values.metricsPort | toString | quote }}
{{- if include "modeldeploy.peeringEnabled" . }}
- --peering
- {{ include "modeldeploy.peeringName" . | quote }}
{{- else }}
- --standalone
{{- end }}
{{- if not (kindIs "invalid" .Values.resyncSeconds) }}
- --resync-seconds
- {{ int .Values.resyncSeconds | toString | quote }}
{{- end }}
{{- end -}}
