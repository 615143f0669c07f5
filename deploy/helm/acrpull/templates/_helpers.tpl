{{/*
Object names are fixed (not derived from the release name): one acrpull per cluster (the CRDs
are cluster-scoped), and the admission policies, the kustomize manifests and the docs name
them.
*/}}

{{/* The controller's ServiceAccount user, as the admission policies match it. */}}
{{- define "acrpull.user" -}}
system:serviceaccount:{{ .Values.namespace }}:acrpull
{{- end }}

{{/*
Selector labels. Only app.kubernetes.io/name, exactly as upstream's chart: a Deployment's
selector is immutable, so `helm upgrade` of an upstream release in the same namespace must keep
it.
*/}}
{{- define "acrpull.selectorLabels" -}}
app.kubernetes.io/name: acrpull
{{- end }}

{{/* Labels of the controller's objects and pods. */}}
{{- define "acrpull.labels" -}}
app.kubernetes.io/name: acrpull
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* Labels of every object: the component's plus commonLabels. */}}
{{- define "acrpull.objectLabels" -}}
{{ include "acrpull.labels" .component }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The image reference: upstream's single string, or repository[:tag][@digest]. */}}
{{- define "acrpull.image" -}}
{{- $image := .Values.image -}}
{{- if kindIs "string" $image -}}
{{- required "image must not be empty" $image -}}
{{- else -}}
{{- $repository := required "image.repository is required" $image.repository -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $image.tag | toString) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{- define "acrpull.imagePullPolicy" -}}
{{- if kindIs "map" .Values.image -}}
{{- default "IfNotPresent" .Values.image.pullPolicy -}}
{{- else -}}
IfNotPresent
{{- end -}}
{{- end }}

{{/*
An IntOrString: "1" (as ARO-HCP's values pass it) becomes 1, "25%" stays a string.
*/}}
{{- define "acrpull.intOrString" -}}
{{- if regexMatch "^[0-9]+$" (toString .) -}}
{{ int64 . }}
{{- else -}}
{{ toString . | quote }}
{{- end -}}
{{- end }}

{{/* The API group of the ServiceMonitor and PodMonitor. */}}
{{- define "acrpull.monitoringApiGroup" -}}
{{- $group := default "monitoring.coreos.com" .Values.monitoringApiGroup -}}
{{- if not (has $group (list "monitoring.coreos.com" "azmonitoring.coreos.com")) -}}
{{- fail (printf "monitoringApiGroup must be monitoring.coreos.com or azmonitoring.coreos.com, not %q" $group) -}}
{{- end -}}
{{- $group -}}
{{- end }}

{{- /*
The tenancy mode as a string: an unquoted `off` in a values file is YAML's false.
*/ -}}
{{- define "acrpull.tenancyMode" -}}
{{- $mode := .Values.tenancy.mode | default "off" | toString -}}
{{- if eq $mode "false" }}off{{ else }}{{ $mode }}{{ end -}}
{{- end }}
