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

{{/* podvirt.image: repository:tag of one entry of .Values.images, given
as (list $ entry). imageRegistry, when set, replaces everything before the
repository's last path element: podvirt.local/podvirt-csi becomes
<imageRegistry>/podvirt-csi. */}}
{{- define "podvirt.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $repo := $img.repository -}}
{{- with $root.Values.imageRegistry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) (base $img.repository) -}}
{{- end -}}
{{- printf "%s:%s" $repo $img.tag -}}
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

{{/* podvirt.existingSnapshotController: "namespace/name" of a snapshot
controller Deployment the cluster runs already (not this release's), by
the usual labels or name; "" when there is none or lookup cannot see the
cluster (helm template, --dry-run=client). */}}
{{- define "podvirt.existingSnapshotController" -}}
{{- $ours := printf "%s-snapshot-controller" (include "podvirt.name" .) -}}
{{- $found := "" -}}
{{- range (lookup "apps/v1" "Deployment" "" "").items -}}
{{- $labels := .metadata.labels | default dict -}}
{{- $mine := and (eq .metadata.namespace $.Release.Namespace) (eq .metadata.name $ours) -}}
{{- if and (not $found) (not $mine) (or (eq .metadata.name "snapshot-controller") (eq (get $labels "app.kubernetes.io/name") "snapshot-controller") (eq (get $labels "app") "snapshot-controller") (eq (get $labels "app.kubernetes.io/component") "snapshot-controller")) -}}
{{- $found = printf "%s/%s" .metadata.namespace .metadata.name -}}
{{- end -}}
{{- end -}}
{{- $found -}}
{{- end -}}

{{/* podvirt.installSnapshotController: "true" when this release installs
the snapshot controller: snapshotController.install true, or auto and
podvirt.existingSnapshotController finds none. */}}
{{- define "podvirt.installSnapshotController" -}}
{{- $v := toString .Values.snapshotController.install -}}
{{- if or (eq $v "true") (and (eq $v "auto") (not (include "podvirt.existingSnapshotController" .))) -}}
true
{{- end -}}
{{- end -}}
