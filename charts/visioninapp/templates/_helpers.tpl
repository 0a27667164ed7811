{{/* Names, labels and images shared by the templates. */}}

{{- define "visioninapp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "visioninapp.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "visioninapp.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image of this release: <registry>/<name>:<tag>[@digest] */}}
{{- define "visioninapp.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $image := printf "%s/%s:%s" .root.Values.image.registry .name $tag -}}
{{- if .root.Values.image.digest -}}{{- $image = printf "%s@%s" $image .root.Values.image.digest -}}{{- end -}}
{{- $image -}}
{{- end -}}

{{- define "visioninapp.operatorServiceAccount" -}}
{{- .Values.operator.serviceAccount.name | default (printf "%s-operator" (include "visioninapp.fullname" .)) -}}
{{- end -}}

{{- define "visioninapp.apiServiceAccount" -}}
{{- .Values.api.serviceAccount.name | default (printf "%s-api" (include "visioninapp.fullname" .)) -}}
{{- end -}}

{{- define "visioninapp.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-credentials" (include "visioninapp.fullname" .)) -}}
{{- end -}}

{{/* Pod and container security: non-root, read-only root filesystem, no privileges. */}}
{{- define "visioninapp.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "visioninapp.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Environment from the shared ConfigMap and the credentials Secret. */}}
{{- define "visioninapp.envFrom" -}}
- configMapRef:
    name: {{ include "visioninapp.fullname" . }}-config
- secretRef:
    name: {{ include "visioninapp.secretName" . }}
    optional: true
{{- end -}}
