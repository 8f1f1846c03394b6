{{/* Chart name. */}}
{{- define "kf-chatops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: "<release>-kf-chatops", or the release name when it already contains the chart name. */}}
{{- define "kf-chatops.fullname" -}}
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

{{- define "kf-chatops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kf-chatops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kf-chatops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The bot pods (the migration Job's pods are component=migrate, so the Service and PDB skip them). */}}
{{- define "kf-chatops.botSelectorLabels" -}}
{{ include "kf-chatops.selectorLabels" . }}
app.kubernetes.io/component: bot
{{- end }}

{{- define "kf-chatops.labels" -}}
helm.sh/chart: {{ include "kf-chatops.chart" . }}
{{ include "kf-chatops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kf-chatops
{{- end }}

{{- define "kf-chatops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kf-chatops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kf-chatops.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The database Secret: PostgreSQL is required. Rendering fails without database.existingSecret or
database.url, and a sqlite URL is refused (SQLite is for the local `kfbot` shell only).
*/}}
{{- define "kf-chatops.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- $url := required "kf-chatops needs PostgreSQL: set database.existingSecret (a Secret with the KFBOT_DATABASE_URL key) or database.url" .Values.database.url }}
{{- if not (regexMatch "^postgres(ql)?(\\+[a-z0-9]+)?://" $url) }}
{{- fail "database.url must be a PostgreSQL URL (postgresql+psycopg://...); SQLite is for the local shell only" }}
{{- end }}
{{- printf "%s-database" (include "kf-chatops.fullname" .) }}
{{- end }}
{{- end }}

{{- define "kf-chatops.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}KFBOT_DATABASE_URL{{ end }}
{{- end }}

{{/* Checks that do not belong to one template; included by the Deployment. */}}
{{- define "kf-chatops.validate" -}}
{{- $_ := include "kf-chatops.databaseSecretName" . }}
{{- $_ = required "slack.existingSecret is required: a Secret with SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET (and SLACK_APP_TOKEN for Socket Mode)" .Values.slack.existingSecret }}
{{- $_ = required "audit.existingSecret is required: a Secret with the KFBOT_AUDIT_KEY audit-log key" .Values.audit.existingSecret }}
{{- if not (has .Values.dex.mode (list "password-cr" "configmap" "external")) }}
{{- fail (printf "dex.mode must be password-cr, configmap or external (got %q)" .Values.dex.mode) }}
{{- end }}
{{- if not (has .Values.provisioner.mode (list "dry-run" "live")) }}
{{- fail (printf "provisioner.mode must be dry-run or live (got %q)" .Values.provisioner.mode) }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.service.enabled) }}
{{- fail "ingress.enabled needs service.enabled=true" }}
{{- end }}
{{- if and .Values.ingress.enabled .Values.slack.socketMode }}
{{- fail "ingress.enabled is for HTTP mode: set slack.socketMode=false (Socket Mode needs no Ingress)" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.host is required when ingress.enabled=true" }}
{{- end }}
{{- end }}

{{/* The bot's environment (values -> env; secrets via secretKeyRef). Shared by the Deployment and the migration Job. */}}
{{- define "kf-chatops.databaseEnv" -}}
- name: KFBOT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kf-chatops.databaseSecretName" . }}
      key: {{ include "kf-chatops.databaseSecretKey" . }}
{{- end }}

{{- define "kf-chatops.env" -}}
- name: SLACK_BOT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.slack.existingSecret }}
      key: {{ .Values.slack.botTokenKey }}
- name: SLACK_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.slack.existingSecret }}
      key: {{ .Values.slack.signingSecretKey }}
{{- if .Values.slack.socketMode }}
- name: SLACK_APP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.slack.existingSecret }}
      key: {{ .Values.slack.appTokenKey }}
{{- end }}
{{- with .Values.slack.teamId }}
- name: KFBOT_SLACK_TEAM_ID
  value: {{ . | quote }}
{{- end }}
- name: KFBOT_AUDIT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.audit.existingSecret }}
      key: {{ .Values.audit.key }}
{{ include "kf-chatops.databaseEnv" . }}
- name: KFBOT_PROVISIONER
  value: {{ .Values.provisioner.mode | quote }}
{{- with .Values.admins.channel }}
- name: KFBOT_ADMIN_CHANNEL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.admins.users }}
- name: KFBOT_ADMIN_USERS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.admins.group }}
- name: KFBOT_ADMIN_GROUP
  value: {{ . | quote }}
{{- end }}
- name: KFBOT_HTTP_PORT
  value: {{ .Values.http.port | quote }}
- name: KFBOT_HEALTH_PORT
  value: {{ .Values.http.healthPort | quote }}
# In-flight requests and acked work get the grace period minus the preStop pause and a margin;
# what is left over stays in the database inbox for another replica (docs/DEPLOY.md).
- name: KFBOT_SHUTDOWN_SECONDS
  value: {{ max 1 (sub (sub (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds)) 5) | quote }}
- name: KFBOT_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: KFBOT_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: KFBOT_REQUEST_TTL
  value: {{ .Values.requests.ttl | quote }}
- name: KFBOT_DEX_MODE
  value: {{ .Values.dex.mode | quote }}
- name: KFBOT_DEX_NAMESPACE
  value: {{ .Values.dex.namespace | quote }}
- name: KFBOT_NAME_DEX_USER
  value: {{ .Values.dex.usernameTemplate | quote }}
- name: KFBOT_DEX_RESTART_QUIET
  value: {{ .Values.dex.restartQuietSeconds | quote }}
{{- with .Values.aws.region }}
- name: KFBOT_AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.aws.eksCluster }}
- name: KFBOT_EKS_CLUSTER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.aws.nodegroupSubnets }}
- name: KFBOT_NODEGROUP_SUBNETS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.aws.nodeRoleArn }}
- name: KFBOT_NODE_ROLE_ARN
  value: {{ . | quote }}
{{- end }}
{{- with .Values.aws.iamPolicyArns }}
- name: KFBOT_IAM_POLICY_ARNS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.kubeflow.kubeApiUrl }}
- name: KFBOT_KUBE_API_URL
  value: {{ . | quote }}
{{- end }}
{{- include "kf-chatops.costEnv" . }}
{{- include "kf-chatops.brownfieldEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The one subject every binding grants to. */}}
{{- define "kf-chatops.subject" -}}
- kind: ServiceAccount
  name: {{ include "kf-chatops.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* Cost control's settings; KFBOT_BOT_PRINCIPAL is the pod's own Istio identity. */}}
{{- define "kf-chatops.costEnv" -}}
{{- $cost := .Values.cost }}
{{- range $name, $value := dict "KFBOT_IDLE_AFTER" $cost.idleAfter "KFBOT_IDLE_GPU_UTIL" (toString $cost.idleGpuUtil) "KFBOT_SCAN_INTERVAL" $cost.scanInterval "KFBOT_COST_CHANNEL" $cost.channel "KFBOT_AUTO_STOP_AFTER" $cost.autoStopAfter "KFBOT_COST_DIGEST" $cost.digest "KFBOT_TIMEZONE" $cost.timezone "KFBOT_PROMETHEUS_URL" $cost.prometheusUrl "KFBOT_CLUSTER_DOMAIN" $cost.clusterDomain }}
{{- if $value }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- with $cost.workspaceChannels }}
- name: KFBOT_WORKSPACE_CHANNELS
  value: {{ include "kf-chatops.pairs" . | quote }}
{{- end }}
{{- if $cost.costExplorer }}
- name: KFBOT_COST_EXPLORER
  value: "on"
{{- end }}
- name: KFBOT_BOT_PRINCIPAL
  value: {{ printf "%s/ns/%s/sa/%s" .Values.istio.trustDomain .Release.Namespace (include "kf-chatops.serviceAccountName" .) | quote }}
{{- end }}

{{- define "kf-chatops.pairs" -}}
{{- $out := list }}
{{- range $k, $v := . }}{{ $out = append $out (printf "%s=%s" $k $v) }}{{ end }}
{{- join "," $out }}
{{- end }}

{{/* Per-workspace IAM, runbook nodegroups, drift, offboarding, App Home: set only when given. */}}
{{- define "kf-chatops.brownfieldEnv" -}}
{{- $aws := .Values.aws }}
{{- $node := $aws.node | default dict }}
{{- $drift := .Values.drift | default dict }}
{{- $offboard := .Values.offboard | default dict }}
{{- $home := .Values.home | default dict }}
{{- range $name, $value := dict "KFBOT_WORKSPACE_IAM" $aws.workspaceIam "KFBOT_OIDC_PROVIDER_ARN" $aws.oidcProviderArn "KFBOT_NODEGROUP_STYLE" $aws.nodegroupStyle "KFBOT_NODE_DISK_SIZE" (toString $node.diskSize) "KFBOT_NODE_DISK_TYPE" $node.diskType "KFBOT_NODE_EKSCTL_LABELS" $node.eksctlLabels "KFBOT_NODE_IMDS_TOKENS" $node.imdsTokens "KFBOT_NODE_IMDS_HOP_LIMIT" (toString $node.imdsHopLimit) "KFBOT_NODE_INSTANCE_TAGS" $node.instanceTags "KFBOT_DRIFT_REPORT" $drift.report "KFBOT_DRIFT_CHANNEL" $drift.channel "KFBOT_OFFBOARD_EVERY" $offboard.every "KFBOT_OFFBOARD_OWNER" $offboard.owner "KFBOT_HOME_REFRESH_SECONDS" (toString $home.refreshSeconds) }}
{{- if $value }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}
