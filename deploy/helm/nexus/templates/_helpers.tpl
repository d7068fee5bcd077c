{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "nexus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, with the chart name unless it already contains it.
*/}}
{{- define "nexus.fullname" -}}
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

{{- define "nexus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nexus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nexus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nexus.labels" -}}
helm.sh/chart: {{ include "nexus.chart" . }}
{{ include "nexus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nexus
{{- end }}

{{- define "nexus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nexus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: the GPU image when gpu.enabled names one, else image.*.
*/}}
{{- define "nexus.image" -}}
{{- $repo := .Values.image.repository }}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if and .Values.gpu.enabled .Values.gpu.image.repository }}
{{- $repo = .Values.gpu.image.repository }}
{{- $tag = default $tag .Values.gpu.image.tag }}
{{- end }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
The Secret the chart creates from plain-text development values (database.url,
objectStore.accessKeyId/secretAccessKey, auth.jwtHs256Secret); empty when none is set.
*/}}
{{- define "nexus.inlineSecretName" -}}
{{- printf "%s-inline" (include "nexus.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nexus.hasInlineSecret" -}}
{{- if or .Values.database.url .Values.objectStore.accessKeyId .Values.objectStore.secretAccessKey .Values.auth.jwtHs256Secret -}}
true
{{- end }}
{{- end }}

{{/*
Secret and key of the database URL: database.existingSecret, else the inline Secret.
*/}}
{{- define "nexus.databaseSecret" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}{{ else if .Values.database.url }}{{ include "nexus.inlineSecretName" . }}{{ end }}
{{- end }}

{{/*
Secret of the HS256 JWT secret: auth.existingSecret, else the inline Secret.
*/}}
{{- define "nexus.authSecret" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecret }}{{ else if .Values.auth.jwtHs256Secret }}{{ include "nexus.inlineSecretName" . }}{{ end }}
{{- end }}

{{/*
Settings `nexus up` would refuse at start, refused at render time instead.
*/}}
{{- define "nexus.validate" -}}
{{- if and (not .Values.auth.enabled) (not .Values.auth.insecure) }}
{{- fail "auth.enabled is false: nexus up refuses to listen on 0.0.0.0 without authentication. Keep auth.enabled (and create an API key with `nexus token create`), or set auth.insecure: true where the network already controls access" }}
{{- end }}
{{- if and .Values.auth.jwksUrl .Values.auth.jwksFile }}
{{- fail "auth.jwksUrl and auth.jwksFile: set one or the other (nexus up accepts a single key set)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: the Secret holding the certificate chain and key" }}
{{- end }}
{{- if and (not .Values.tls.enabled) (or .Values.tls.clientCaKey .Values.tls.clientCaSecretName) }}
{{- fail "tls.clientCaKey (mutual TLS) needs tls.enabled with the server's certificate" }}
{{- end }}
{{- end }}

{{/*
Paths of the TLS files in the container.
*/}}
{{- define "nexus.tlsPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.tls.mountPath) .file }}
{{- end }}

{{/*
A probe: HTTP(S) GET of `path` on the http port, or with mutual TLS (the kubelet has no client
certificate) a TCP check of that port. Arguments: root, probe (its values).
*/}}
{{- define "nexus.probeAction" -}}
{{- if and .root.Values.tls.enabled .root.Values.tls.clientCaKey }}
tcpSocket:
  port: http
{{- else }}
httpGet:
  path: {{ .probe.path }}
  port: http
  {{- if .root.Values.tls.enabled }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}

{{/*
The Service address pipeline step pods use to reach Nexus.
*/}}
{{- define "nexus.inClusterUrl" -}}
{{- printf "%s://%s.%s.svc:%v" (ternary "https" "http" .Values.tls.enabled) (include "nexus.fullname" .) .Release.Namespace .Values.ports.http }}
{{- end }}

{{/*
The config file `nexus up --config` reads (YAML; keys are `nexus up` flag names with _ for -).
Every non-secret setting of the values goes here; nexus.config adds or overrides any key.
Secrets come from the environment (NEXUS_DATABASE_URL, ...), which overrides the file.
*/}}
{{- define "nexus.configFile" -}}
{{- $v := .Values }}
{{- $c := dict }}
{{- $_ := set $c "address" "0.0.0.0" }}
{{- $_ = set $c "http_port" (int64 $v.ports.http) }}
{{- $_ = set $c "grpc_port" (int64 $v.ports.grpc) }}
{{- $_ = set $c "metrics_port" (int64 $v.ports.metrics) }}
{{- $_ = set $c "model_repository" $v.nexus.modelRepositoryPath }}
{{- $_ = set $c "model_control_mode" $v.nexus.modelControlMode }}
{{- with $v.nexus.loadModels }}
{{- $_ = set $c "load_model" . }}
{{- end }}
{{- if eq $v.nexus.modelControlMode "poll" }}
{{- $_ = set $c "repository_poll_secs" (int64 $v.nexus.repositoryPollSecs) }}
{{- end }}
{{- with $v.nexus.registryModels }}
{{- $_ = set $c "model" . }}
{{- end }}
{{- if not (kindIs "invalid" $v.nexus.instances) }}
{{- $_ = set $c "instances" (int64 $v.nexus.instances) }}
{{- end }}
{{- $_ = set $c "max_queue_size" (int64 $v.nexus.maxQueueSize) }}
{{- $_ = set $c "max_request_bytes" (int64 $v.nexus.maxRequestBytes) }}
{{- $_ = set $c "ort_intra_threads" (int64 $v.nexus.ortIntraThreads) }}
{{- $_ = set $c "data_dir" $v.nexus.dataDir }}
{{- $_ = set $c "model_cache" $v.nexus.modelCache }}
{{- with $v.objectStore.url }}
{{- $_ = set $c "artifacts_destination" . }}
{{- end }}
{{- $_ = set $c "executor" $v.pipelines.executor }}
{{- if not (kindIs "invalid" $v.pipelines.parallelism) }}
{{- $_ = set $c "pipeline_parallelism" (int64 $v.pipelines.parallelism) }}
{{- end }}
{{- if eq $v.pipelines.executor "kubernetes" }}
{{- $k := $v.pipelines.kubernetes }}
{{- $_ = set $c "pipeline_server_url" (include "nexus.inClusterUrl" .) }}
{{- $_ = set $c "k8s_namespace" .Release.Namespace }}
{{- $_ = set $c "k8s_service_account" (include "nexus.serviceAccountName" .) }}
{{- $_ = set $c "k8s_image" $k.image }}
{{- $_ = set $c "k8s_ttl_seconds" (int64 $k.ttlSeconds) }}
{{- with $k.workPvc }}
{{- $_ = set $c "k8s_work_pvc" . }}
{{- end }}
{{- with $k.imagePullSecrets }}
{{- $_ = set $c "k8s_image_pull_secret" . }}
{{- end }}
{{- if $v.gpu.enabled }}
{{- $selectors := list }}
{{- range $key, $val := $v.gpu.nodeSelector }}
{{- $selectors = append $selectors (printf "%s=%s" $key $val) }}
{{- end }}
{{- with $selectors }}
{{- $_ = set $c "k8s_gpu_node_selector" . }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $v.events.enabled }}
{{- $_ = set $c "no_events" true }}
{{- else }}
{{- with $v.events.kafkaBrokers }}
{{- $_ = set $c "kafka_brokers" . }}
{{- $_ = set $c "kafka_partitions" (int64 $v.events.kafkaPartitions) }}
{{- $_ = set $c "kafka_replication_factor" (int64 $v.events.kafkaReplicationFactor) }}
{{- $_ = set $c "kafka_compression" $v.events.kafkaCompression }}
{{- end }}
{{- $_ = set $c "event_buffer" (int64 $v.events.eventBuffer) }}
{{- with $v.optimizer.routeModels }}
{{- $_ = set $c "route_model" . }}
{{- end }}
{{- if not (kindIs "invalid" $v.optimizer.latencySloMs) }}
{{- $_ = set $c "latency_slo_ms" $v.optimizer.latencySloMs }}
{{- end }}
{{- $_ = set $c "optimizer_interval_ms" (int64 $v.optimizer.intervalMs) }}
{{- $_ = set $c "promote_alias" $v.optimizer.promoteAlias }}
{{- $_ = set $c "promotion_confidence" $v.optimizer.promotionConfidence }}
{{- end }}
{{- toYaml (mergeOverwrite $c (default dict $v.nexus.config)) }}
{{- end }}

{{/*
Where the config file is mounted in the container.
*/}}
{{- define "nexus.configPath" -}}
{{- printf "%s/nexus.yaml" (trimSuffix "/" .Values.config.mountPath) }}
{{- end }}

{{/*
`nexus up` arguments: the config file, the log format (a global flag, not a config key) and
librdkafka options, which stay flags so that a $(VAR) reference to a Secret-backed variable
is expanded by Kubernetes (files are not). A --kafka-option flag replaces the file's list.
*/}}
{{- define "nexus.args" -}}
{{- $a := list "up" (printf "--config=%s" (include "nexus.configPath" .)) (printf "--log-format=%s" .Values.nexus.logFormat) }}
{{- if and .Values.events.enabled .Values.events.kafkaBrokers }}
{{- range .Values.events.kafkaOptions }}
{{- $a = append $a (printf "--kafka-option=%s" .) }}
{{- end }}
{{- end }}
{{- range .Values.nexus.extraArgs }}
{{- $a = append $a (toString .) }}
{{- end }}
{{- toYaml $a }}
{{- end }}

{{/*
The container's explicit environment: plain values (the gateway's settings as the NEXUS_*
variables of their `nexus up` options, tracing, the object store's endpoint), secrets by
reference, then extraEnv.
*/}}
{{- define "nexus.env" -}}
{{- $dbSecret := include "nexus.databaseSecret" . }}
{{- $authSecret := include "nexus.authSecret" . }}
{{- $plain := dict "RUST_LOG" .Values.nexus.rustLog }}
{{- with .Values.objectStore.endpoint }}{{ $_ := set $plain "AWS_ENDPOINT" . }}{{ end }}
{{- with .Values.objectStore.region }}{{ $_ := set $plain "AWS_REGION" . }}{{ end }}
{{- if .Values.objectStore.allowHttp }}{{ $_ := set $plain "AWS_ALLOW_HTTP" "true" }}{{ end }}
{{- $a := .Values.auth }}
{{- if $a.enabled }}{{ $_ := set $plain "NEXUS_AUTH" "true" }}{{ end }}
{{- if $a.insecure }}{{ $_ := set $plain "NEXUS_INSECURE" "true" }}{{ end }}
{{- with $a.jwksUrl }}{{ $_ := set $plain "NEXUS_JWKS_URL" . }}{{ end }}
{{- with $a.jwksFile }}{{ $_ := set $plain "NEXUS_JWKS_FILE" . }}{{ end }}
{{- with $a.jwtIssuer }}{{ $_ := set $plain "NEXUS_JWT_ISSUER" . }}{{ end }}
{{- with $a.jwtAudience }}{{ $_ := set $plain "NEXUS_JWT_AUDIENCE" . }}{{ end }}
{{- with $a.jwtRoleClaim }}{{ $_ := set $plain "NEXUS_JWT_ROLE_CLAIM" . }}{{ end }}
{{- if not (kindIs "invalid" $a.jwksRefreshSecs) }}{{ $_ := set $plain "NEXUS_JWKS_REFRESH_SECS" (toString (int64 $a.jwksRefreshSecs)) }}{{ end }}
{{- if not (kindIs "invalid" $a.jwtLeewaySecs) }}{{ $_ := set $plain "NEXUS_JWT_LEEWAY_SECS" (toString (int64 $a.jwtLeewaySecs)) }}{{ end }}
{{- $r := .Values.rateLimits }}
{{- if not (kindIs "invalid" $r.perCredentialRps) }}{{ $_ := set $plain "NEXUS_PER_CREDENTIAL_RPS" (toString $r.perCredentialRps) }}{{ end }}
{{- if not (kindIs "invalid" $r.perCredentialBurst) }}{{ $_ := set $plain "NEXUS_PER_CREDENTIAL_BURST" (toString (int64 $r.perCredentialBurst)) }}{{ end }}
{{- if not (kindIs "invalid" $r.perModelRps) }}{{ $_ := set $plain "NEXUS_PER_MODEL_RPS" (toString $r.perModelRps) }}{{ end }}
{{- if not (kindIs "invalid" $r.perModelBurst) }}{{ $_ := set $plain "NEXUS_PER_MODEL_BURST" (toString (int64 $r.perModelBurst)) }}{{ end }}
{{- if .Values.tls.enabled }}
{{- $_ := set $plain "NEXUS_TLS_CERT" (include "nexus.tlsPath" (dict "root" . "file" "tls.crt")) }}
{{- $_ := set $plain "NEXUS_TLS_KEY" (include "nexus.tlsPath" (dict "root" . "file" "tls.key")) }}
{{- if .Values.tls.clientCaKey }}
{{- $_ := set $plain "NEXUS_TLS_CLIENT_CA" (include "nexus.tlsPath" (dict "root" . "file" "client-ca.crt")) }}
{{- end }}
{{- end }}
{{- with .Values.tracing.otlpEndpoint }}
{{- $_ := set $plain "OTEL_EXPORTER_OTLP_ENDPOINT" . }}
{{- $_ := set $plain "OTEL_SERVICE_NAME" $.Values.tracing.serviceName }}
{{- end }}
{{- if and .Values.gpu.enabled .Values.gpu.ortLibrary }}{{ $_ := set $plain "ORT_DYLIB_PATH" .Values.gpu.ortLibrary }}{{ end }}
{{- range $k, $val := .Values.config.env }}{{ $_ := set $plain $k (toString $val) }}{{ end }}
{{- range $k, $val := $plain }}
- name: {{ $k }}
  value: {{ $val | quote }}
{{- end }}
{{- if $dbSecret }}
- name: NEXUS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $dbSecret }}
      key: {{ .Values.database.urlKey }}
{{- end }}
{{- if and (not .Values.objectStore.existingSecret) .Values.objectStore.accessKeyId }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "nexus.inlineSecretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "nexus.inlineSecretName" . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- if $authSecret }}
- name: NEXUS_JWT_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $authSecret }}
      key: {{ .Values.auth.jwtHs256SecretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
