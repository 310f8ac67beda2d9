{{/*
The chart's name: "kascade", or nameOverride.
*/}}
{{- define "kascade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name object names start with. Truncated at 63 characters, the
limit of DNS-1123 labels (Service names, label values). A release name that
already contains the chart's name is used as it is.
*/}}
{{- define "kascade.fullname" -}}
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

{{/*
The full name plus a suffix, still at most 63 characters (the full name is
shortened): (dict "context" $ "suffix" "operator").
*/}}
{{- define "kascade.suffixedName" -}}
{{- $room := int (sub 62 (len .suffix)) }}
{{- printf "%s-%s" (include "kascade.fullname" .context | trunc $room | trimSuffix "-") .suffix }}
{{- end }}

{{/*
Name of the operator's Deployment, ServiceAccount, Roles and bindings.
*/}}
{{- define "kascade.operatorName" -}}
{{- include "kascade.suffixedName" (dict "context" . "suffix" "operator") }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kascade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the chart. Never used in selectors: the version
and chart labels change with upgrades, and a Deployment's selector is immutable.
*/}}
{{- define "kascade.labels" -}}
helm.sh/chart: {{ include "kascade.chart" . }}
{{ include "kascade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kascade
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: stable for the life of the release.
*/}}
{{- define "kascade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kascade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of the operator.
*/}}
{{- define "kascade.operatorLabels" -}}
{{ include "kascade.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kascade.operatorSelectorLabels" -}}
{{ include "kascade.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "kascade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kascade.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount the operator runs as (serviceAccount.create is false)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"true" in cluster-wide mode (no namespaces listed), "" otherwise.
*/}}
{{- define "kascade.clusterWide" -}}
{{- if not .Values.watch.namespaces }}true{{ end }}
{{- end }}

{{/*
"true" when the operator gets its optional cluster-scoped reads (rbac.clusterReads; null follows the mode).
*/}}
{{- define "kascade.clusterReads" -}}
{{- if kindIs "invalid" .Values.rbac.clusterReads }}
{{- include "kascade.clusterWide" . }}
{{- else if .Values.rbac.clusterReads }}true
{{- end }}
{{- end }}

{{/*
Images. An empty tag means the chart's appVersion. With imageRegistry (or
global.imageRegistry) set, a Kascade image keeps its name under that registry:
(dict "context" $ "repository" "ghcr.io/kascade-dev/kascade-operator") with
imageRegistry=registry.example.com/ml gives registry.example.com/ml/kascade-operator.
*/}}
{{- define "kascade.repository" -}}
{{- $registry := .context.Values.imageRegistry | default (.context.Values.global | default dict).imageRegistry | default "" | trimSuffix "/" }}
{{- if $registry }}
{{- printf "%s/%s" $registry (.repository | splitList "/" | last) }}
{{- else }}
{{- .repository }}
{{- end }}
{{- end }}

{{- define "kascade.operatorImage" -}}
{{- $repository := include "kascade.repository" (dict "context" . "repository" .Values.operator.image.repository) }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "kascade.runtimeImage" -}}
{{- $repository := include "kascade.repository" (dict "context" . "repository" .Values.cascades.runtimeImage.repository) }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.cascades.runtimeImage.tag) }}
{{- end }}

{{- define "kascade.runtimeGpuImage" -}}
{{- $repository := include "kascade.repository" (dict "context" . "repository" .Values.cascades.runtimeImage.repository) }}
{{- printf "%s:%s" $repository (default (printf "%s-cuda" .Chart.AppVersion) .Values.cascades.runtimeImage.gpuTag) }}
{{- end }}

{{- define "kascade.vllmImage" -}}
{{- printf "%s:%s" .Values.cascades.vllmImage.repository .Values.cascades.vllmImage.tag }}
{{- end }}

{{/*
Namespace of an optional object (ServiceMonitor, dashboard): its own, else the release's.
*/}}
{{- define "kascade.namespaceOr" -}}
{{- default .context.Release.Namespace .namespace }}
{{- end }}
