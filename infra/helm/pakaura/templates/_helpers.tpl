{{/* Names, labels and the shared pieces of the pod specs (T-020). */}}

{{- define "pakaura.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pakaura.fullname" -}}
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

{{- define "pakaura.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; `component` tells the API, relay, migration and database pods apart. */}}
{{- define "pakaura.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pakaura.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "pakaura.labels" -}}
helm.sh/chart: {{ include "pakaura.chart" .root }}
{{ include "pakaura.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: pakaura
{{- end }}

{{- define "pakaura.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pakaura.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pakaura.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "pakaura.configMapName" -}}
{{- printf "%s-config" (include "pakaura.fullname" .) }}
{{- end }}

{{- define "pakaura.localSecretName" -}}
{{- printf "%s-local" (include "pakaura.fullname" .) }}
{{- end }}

{{- define "pakaura.postgresqlName" -}}
{{- printf "%s-postgresql" (include "pakaura.fullname" .) }}
{{- end }}

{{/* Secret holding DATABASE_URL and BETTER_AUTH_SECRET. */}}
{{- define "pakaura.appSecretName" -}}
{{- if .Values.localSecrets.create }}
{{- include "pakaura.localSecretName" . }}
{{- else }}
{{- required "secrets.existingSecret is required: the Secret with DATABASE_URL and BETTER_AUTH_SECRET (see docs/deploy.md)" .Values.secrets.existingSecret }}
{{- end }}
{{- end }}

{{/* Secret holding the Dapr API token under the key `token` (Dapr's convention). */}}
{{- define "pakaura.daprTokenSecretName" -}}
{{- if .Values.localSecrets.create }}
{{- include "pakaura.localSecretName" . }}
{{- else }}
{{- required "dapr.apiToken.existingSecret is required when dapr.apiToken.enabled: a Secret with the key `token` (see docs/deploy.md)" .Values.dapr.apiToken.existingSecret }}
{{- end }}
{{- end }}

{{/* "true" when the app publishes through Dapr: one switch for the env var and the sidecar. */}}
{{- define "pakaura.daprEnabled" -}}
{{- if eq (toString (index .Values.env "DAPR_ENABLED" | default "false") | lower) "true" }}true{{ end }}
{{- end }}

{{- define "pakaura.daprTokenEnabled" -}}
{{- if and (include "pakaura.daprEnabled" .) .Values.dapr.apiToken.enabled }}true{{ end }}
{{- end }}

{{/*
Refuses values that would leak a secret into a ConfigMap or fight the chart, with a message
that names the value to change.
*/}}
{{- define "pakaura.validate" -}}
{{- range $key := list "DATABASE_URL" "BETTER_AUTH_SECRET" "DAPR_API_TOKEN" }}
{{- if hasKey $.Values.env $key }}
{{- fail (printf "env.%s is a secret and would be rendered in plain text into a ConfigMap: put it in the Secret named by secrets.existingSecret / dapr.apiToken.existingSecret instead" $key) }}
{{- end }}
{{- end }}
{{- if hasKey .Values.env "RELAY_ENABLED" }}
{{- fail "env.RELAY_ENABLED is set by the chart: use relay.enabled (true runs the relay in its own Deployment and turns it off in the API pods)" }}
{{- end }}
{{- if hasKey .Values.env "MCP_ALLOWED_HOSTS" }}
{{- fail "env.MCP_ALLOWED_HOSTS is set by the chart from the Service and ingress host names: add more with mcp.extraAllowedHosts" }}
{{- end }}
{{- if and .Values.postgresql.enabled (not .Values.localSecrets.create) }}
{{- fail "postgresql.enabled needs localSecrets.create (the in-cluster PostgreSQL is for local clusters; use values-local.yaml)" }}
{{- end }}
{{- if .Values.localSecrets.create }}
{{- if not .Values.localSecrets.betterAuthSecret }}
{{- fail "localSecrets.betterAuthSecret is required when localSecrets.create is true" }}
{{- end }}
{{- if and (include "pakaura.daprTokenEnabled" .) (not .Values.localSecrets.daprApiToken) }}
{{- fail "localSecrets.daprApiToken is required when localSecrets.create and dapr.apiToken.enabled are true" }}
{{- end }}
{{- if and .Values.postgresql.enabled (not (regexMatch "^[A-Za-z0-9._~-]+$" (toString .Values.localSecrets.postgresPassword))) }}
{{- fail "localSecrets.postgresPassword is required when postgresql.enabled is true (letters, digits and ._~- only: it goes into DATABASE_URL unescaped)" }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) (not .Values.localSecrets.databaseUrl) }}
{{- fail "localSecrets.databaseUrl is required when postgresql.enabled is false (an external postgresql+psycopg:// URL)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* DATABASE_URL of the in-cluster PostgreSQL (local clusters). */}}
{{- define "pakaura.localDatabaseUrl" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "postgresql+psycopg://%s:%s@%s:5432/%s" .Values.postgresql.username .Values.localSecrets.postgresPassword (include "pakaura.postgresqlName" .) .Values.postgresql.database }}
{{- else }}
{{- .Values.localSecrets.databaseUrl }}
{{- end }}
{{- end }}

{{/*
Host header values the MCP transport accepts (its DNS-rebinding protection answers 421 to
others): the Service's names with and without a port, loopback for port-forwarding, ingress
hosts and extras. A JSON list, as pydantic-settings reads list settings from the environment.
*/}}
{{- define "pakaura.mcpAllowedHosts" -}}
{{- $svc := include "pakaura.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $hosts := list }}
{{- range $name := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $.Values.clusterDomain) }}
{{- $hosts = append $hosts $name }}
{{- $hosts = append $hosts (printf "%s:*" $name) }}
{{- end }}
{{- $hosts = concat $hosts (list "127.0.0.1:*" "localhost:*" "[::1]:*") }}
{{- if .Values.ingress.enabled }}
{{- range $host := .Values.ingress.hosts }}
{{- $hosts = append $hosts $host }}
{{- $hosts = append $hosts (printf "%s:*" $host) }}
{{- end }}
{{- end }}
{{- $hosts = concat $hosts .Values.mcp.extraAllowedHosts }}
{{- $hosts | uniq | toJson }}
{{- end }}

{{/* Secrets as env vars, always by reference (secretKeyRef), never by value. */}}
{{- define "pakaura.secretEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pakaura.appSecretName" . }}
      key: {{ if .Values.localSecrets.create }}DATABASE_URL{{ else }}{{ .Values.secrets.databaseUrlKey }}{{ end }}
- name: BETTER_AUTH_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "pakaura.appSecretName" . }}
      key: {{ if .Values.localSecrets.create }}BETTER_AUTH_SECRET{{ else }}{{ .Values.secrets.betterAuthSecretKey }}{{ end }}
{{- if include "pakaura.daprTokenEnabled" . }}
# The same Secret and key daprd reads through dapr.io/api-token-secret.
- name: DAPR_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "pakaura.daprTokenSecretName" . }}
      key: token
{{- end }}
{{- end }}

{{/*
Dapr sidecar annotations, values quoted (annotations are strings). `appPort` is omitted for
the relay, which serves no HTTP.
*/}}
{{- define "pakaura.daprAnnotations" -}}
{{- $v := .root.Values -}}
dapr.io/enabled: "true"
dapr.io/app-id: {{ .appId | quote }}
{{- if .appPort }}
dapr.io/app-port: {{ .appPort | quote }}
dapr.io/app-protocol: "http"
{{- end }}
dapr.io/log-level: {{ $v.dapr.logLevel | quote }}
dapr.io/log-as-json: "true"
dapr.io/graceful-shutdown-seconds: {{ $v.dapr.gracefulShutdownSeconds | quote }}
{{- if include "pakaura.daprTokenEnabled" .root }}
dapr.io/api-token-secret: {{ include "pakaura.daprTokenSecretName" .root | quote }}
{{- end }}
{{- with $v.dapr.config }}
dapr.io/config: {{ . | quote }}
{{- end }}
{{- with $v.dapr.sidecar.cpuRequest }}
dapr.io/sidecar-cpu-request: {{ . | quote }}
{{- end }}
{{- with $v.dapr.sidecar.cpuLimit }}
dapr.io/sidecar-cpu-limit: {{ . | quote }}
{{- end }}
{{- with $v.dapr.sidecar.memoryRequest }}
dapr.io/sidecar-memory-request: {{ . | quote }}
{{- end }}
{{- with $v.dapr.sidecar.memoryLimit }}
dapr.io/sidecar-memory-limit: {{ . | quote }}
{{- end }}
{{- range $key, $value := $v.dapr.extraAnnotations }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Volumes for a read-only root file system: Python and libraries may still need /tmp. */}}
{{- define "pakaura.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "pakaura.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
