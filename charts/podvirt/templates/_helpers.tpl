{{/* Names and labels shared by every object of the chart. */}}

{{- define "podvirt.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "podvirt.labels" -}}
app.kubernetes.io/name: podvirt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* podvirt.selector: the labels that select one component's pods. */}}
{{- define "podvirt.selector" -}}
app.kubernetes.io/name: podvirt
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* podvirt.image: repository:tag of one entry of .Values.images. */}}
{{- define "podvirt.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{- define "podvirt.pullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* podvirt.apiEnv: environment that points in-cluster clients at
kubernetesAPI, when set (clusters without a Service proxy). */}}
{{- define "podvirt.apiEnv" -}}
{{- with .Values.kubernetesAPI.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ required "kubernetesAPI.port is required with kubernetesAPI.host" $.Values.kubernetesAPI.port | toString | quote }}
{{- end }}
{{- end -}}
