{{/* Names, labels and small helpers shared by the templates. */}}

{{- define "bpj.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "bpj.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bpj.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bpj.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bpj.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bpj.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "bpj.serviceAccountName" -}}
{{- default (include "bpj.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "bpj.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when every watchNamespaces entry is a plain name (no glob, exclusion or list: the
characters of bert_pretrain_operator.settings.NAMESPACE_PATTERN_CHARS): the operator then
gets Roles in those namespaces and nothing cluster-wide. Empty otherwise.
*/}}
{{- define "bpj.namespacedRBAC" -}}
{{- $exact := gt (len .Values.watchNamespaces) 0 -}}
{{- range .Values.watchNamespaces -}}
{{- if regexMatch "[*?!,\\[]" . -}}{{- $exact = false -}}{{- end -}}
{{- end -}}
{{- if $exact -}}true{{- end -}}
{{- end -}}

{{/*
The trainer pods' ServiceAccount (and its Role and RoleBinding) in each trainer
namespace: trainer.serviceAccountName, else "<fullname>-trainer", unique per release.
*/}}
{{- define "bpj.trainerServiceAccountName" -}}
{{- default (printf "%s-trainer" (include "bpj.fullname" .) | trunc 63 | trimSuffix "-") .Values.trainer.serviceAccountName -}}
{{- end -}}

{{/* The progress policy and its binding (cluster-scoped): unique per release. */}}
{{- define "bpj.progressPolicyName" -}}
{{- printf "%s-trainer-progress" (include "bpj.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
