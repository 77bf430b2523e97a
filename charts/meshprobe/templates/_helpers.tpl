{{/* Names and labels. */}}
{{- define "meshprobe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshprobe.fullname" -}}
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

{{- define "meshprobe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshprobe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshprobe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "meshprobe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "meshprobe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "meshprobe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "meshprobe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* SERVERS_ZK: the bundled ZooKeeper when enabled, else zookeeper.servers. */}}
{{- define "meshprobe.zkServers" -}}
{{- if .Values.zookeeper.enabled -}}
{{- printf "%s-zookeeper.%s.svc:2181" (include "meshprobe.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.zookeeper.servers -}}
{{- end -}}
{{- end -}}

{{/* MESHPROBE_ADMIN_LISTEN: [v6]:port or v4:port; no address = the node's IP (kubelet expands
     $(MESHPROBE_NODE_IP), set before it; the agent takes an IPv6 address without brackets). */}}
{{- define "meshprobe.adminListen" -}}
{{- $a := .Values.agent.adminAddress -}}
{{- if not $a -}}
{{- printf "$(MESHPROBE_NODE_IP):%d" (int .Values.agent.adminPort) -}}
{{- else if contains ":" $a -}}
{{- printf "[%s]:%d" $a (int .Values.agent.adminPort) -}}
{{- else -}}
{{- printf "%s:%d" $a (int .Values.agent.adminPort) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap with configToml and the peers file exists. */}}
{{- define "meshprobe.needsConfigMap" -}}
{{- if or .Values.agent.configToml .Values.agent.peersFile -}}true{{- end -}}
{{- end -}}

{{- define "meshprobe.rbacNeeded" -}}
{{- if and .Values.rbac.create (eq .Values.zone.source "nodeLabel") -}}true{{- end -}}
{{- end -}}

{{/* Duration strings go to the agent as they are (humantime). */}}
{{/*
Secrets the agent reads, as YAML: one directory under /etc/meshprobe/secrets each,
`<dir>: {secret: <name>, items: [{key, path}]}`. Mounted read-only; settings name the files.
*/}}
{{- define "meshprobe.secretMounts" -}}
{{- $za := .Values.zookeeper.auth -}}
{{- if $za.username }}
zookeeper:
  secret: {{ $za.passwordSecret | quote }}
  items:
    - key: {{ $za.passwordKey | quote }}
      path: password
{{- end }}
{{- $sa := .Values.agent.stampAuth -}}
{{- if $sa.keySecret }}
stamp:
  secret: {{ $sa.keySecret | quote }}
  items:
    - key: {{ $sa.keyKey | quote }}
      path: key
    {{- if $sa.nextKeyKey }}
    - key: {{ $sa.nextKeyKey | quote }}
      path: next-key
    {{- end }}
{{- end }}
{{- $ks := .Values.kafka.security -}}
{{- if $ks.caSecret }}
kafka-ca:
  secret: {{ $ks.caSecret | quote }}
  items:
    - key: {{ $ks.caKey | quote }}
      path: ca.crt
{{- end }}
{{- if $ks.clientCertSecret }}
kafka-client:
  secret: {{ $ks.clientCertSecret | quote }}
  items:
    - key: tls.crt
      path: tls.crt
    - key: tls.key
      path: tls.key
{{- end }}
{{- if $ks.saslPasswordSecret }}
kafka-sasl:
  secret: {{ $ks.saslPasswordSecret | quote }}
  items:
    - key: {{ $ks.saslPasswordKey | quote }}
      path: password
{{- end }}
{{- if .Values.kafka.propertiesSecret }}
kafka-properties:
  secret: {{ .Values.kafka.propertiesSecret | quote }}
  items:
    - key: {{ .Values.kafka.propertiesKey | quote }}
      path: kafka.properties
{{- end }}
{{- end -}}

{{- define "meshprobe.env" -}}
{{- $a := .Values.agent -}}
{{- $k := .Values.kafka -}}
{{- $z := .Values.zookeeper -}}
- name: MESHPROBE_NODE_ID
{{- if $a.nodeId }}
  value: {{ $a.nodeId | quote }}
{{- else }}
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end }}
{{- if eq .Values.zone.source "value" }}
- name: MESHPROBE_ZONE
  value: {{ .Values.zone.value | quote }}
{{- else if eq .Values.zone.source "podLabel" }}
- name: MESHPROBE_ZONE
  valueFrom:
    fieldRef:
      fieldPath: {{ printf "metadata.labels['%s']" .Values.zone.nodeLabel | quote }}
{{- end }}
- name: MESHPROBE_RACK
  value: {{ $a.rack | quote }}
{{- $zk := include "meshprobe.zkServers" . }}
{{- if $zk }}
- name: SERVERS_ZK
  value: {{ $zk | quote }}
{{- end }}
- name: ROOT_PATH_ZK
  value: {{ $z.rootPath | quote }}
- name: HEART_BEAT_NODE_PATH
  value: {{ $z.heartBeatNodePath | quote }}
{{- with $z.auth }}
{{- if .username }}
- name: ZK_SASL_USERNAME
  value: {{ .username | quote }}
- name: ZK_SASL_PASSWORD_FILE
  value: /etc/meshprobe/secrets/zookeeper/password
{{- if .worldRead }}
- name: ZK_WORLD_READ
  value: "true"
{{- end }}
{{- end }}
{{- end }}
- name: CONN_TIMEOUT
  value: {{ $a.connTimeout | toString | quote }}
{{- if $k.bootstrapServers }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $k.bootstrapServers | quote }}
{{- end }}
- name: KAFKA_TOPIC
  value: {{ $k.topic | quote }}
- name: KAFKA_PRODUCER_GROUP
  value: {{ $k.producerGroup | quote }}
{{- if $k.probes }}
- name: MESHPROBE_KAFKA_PROBES
  value: "true"
{{- end }}
- name: MESHPROBE_KAFKA_BUFFER_MESSAGES
  value: {{ $k.bufferMessages | int64 | toString | quote }}
- name: MESHPROBE_KAFKA_COMPRESSION
  value: {{ $k.compression | quote }}
{{- with $k.security }}
{{- if ne .protocol "plaintext" }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .protocol | quote }}
{{- end }}
{{- if .caSecret }}
- name: KAFKA_SSL_CA_FILE
  value: /etc/meshprobe/secrets/kafka-ca/ca.crt
{{- end }}
{{- if .clientCertSecret }}
- name: KAFKA_SSL_CERT_FILE
  value: /etc/meshprobe/secrets/kafka-client/tls.crt
- name: KAFKA_SSL_KEY_FILE
  value: /etc/meshprobe/secrets/kafka-client/tls.key
{{- end }}
{{- if .saslMechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .saslMechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ .saslUsername | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: /etc/meshprobe/secrets/kafka-sasl/password
{{- end }}
{{- end }}
{{- if $k.propertiesSecret }}
- name: KAFKA_PROPERTIES_FILE
  value: /etc/meshprobe/secrets/kafka-properties/kafka.properties
{{- end }}
{{- range $name, $v := $k.properties }}
- name: {{ printf "KAFKA_PROPERTY_%s" ($name | upper | replace "." "_") }}
  value: {{ $v | quote }}
{{- end }}
- name: REGISTER_PUBLIC_DNS
{{- if $a.register.publicDns }}
  value: {{ $a.register.publicDns | quote }}
{{- else }}
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- if $a.register.publicPort }}
- name: REGISTER_PUBLIC_PORT
  value: {{ $a.register.publicPort | int | toString | quote }}
{{- end }}
- name: REGISTER_LISTENER_DNS
  value: {{ $a.register.listenerDns | quote }}
- name: REGISTER_LISTENER_PORT
  value: {{ $a.register.listenerPort | int | toString | quote }}
{{- if $a.peers }}
- name: MESHPROBE_PEERS
  value: {{ join "," $a.peers | quote }}
{{- end }}
{{- if $a.peersFile }}
- name: MESHPROBE_PEERS_FILE
  value: /etc/meshprobe/chart/peers.txt
{{- end }}
- name: MESHPROBE_INTERVAL
  value: {{ $a.interval | quote }}
- name: MESHPROBE_JITTER
  value: {{ $a.jitter | int | toString | quote }}
- name: MESHPROBE_TIMEOUT
  value: {{ $a.timeout | quote }}
- name: MESHPROBE_SIZES
  value: {{ join "," $a.sizes | quote }}
- name: MESHPROBE_WINDOW
  value: {{ $a.window | quote }}
- name: MESHPROBE_PEER_GRACE
  value: {{ $a.peerGrace | quote }}
{{- if $a.peerNetworks }}
- name: MESHPROBE_PEER_NETWORKS
  value: {{ $a.peerNetworks | quote }}
{{- end }}
{{- if $a.peerPorts }}
- name: MESHPROBE_PEER_PORTS
  value: {{ $a.peerPorts | quote }}
{{- end }}
{{- if not (kindIs "invalid" $a.maxMembers) }}
- name: MESHPROBE_MAX_MEMBERS
  value: {{ $a.maxMembers | quote }}
{{- end }}
{{- range $key, $env := dict "fullMeshMax" "MESHPROBE_PINGLIST_FULL_MESH_MAX" "rackPeers" "MESHPROBE_PINGLIST_RACK_PEERS" "zonePeers" "MESHPROBE_PINGLIST_ZONE_PEERS" "minProbers" "MESHPROBE_PINGLIST_MIN_PROBERS" "maxPeers" "MESHPROBE_PINGLIST_MAX_PEERS" }}
{{- $v := index ($a.pinglist | default dict) $key }}
{{- if not (kindIs "invalid" $v) }}
- name: {{ $env }}
  value: {{ $v | int | toString | quote }}
{{- end }}
{{- end }}
{{- if $a.output }}
- name: MESHPROBE_OUTPUT
  value: {{ $a.output | quote }}
{{- end }}
{{- if not $a.adminAddress }}
- name: MESHPROBE_NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
- name: MESHPROBE_ADMIN_LISTEN
  value: {{ include "meshprobe.adminListen" . | quote }}
{{- if $a.reflectAllow }}
- name: MESHPROBE_REFLECT_ALLOW
  value: {{ $a.reflectAllow | quote }}
{{- end }}
{{- if $a.reflectBudgetPerSource }}
- name: MESHPROBE_REFLECT_BUDGET_PER_SOURCE
  value: {{ $a.reflectBudgetPerSource | quote }}
{{- end }}
{{- if $a.reflectBudgetTotal }}
- name: MESHPROBE_REFLECT_BUDGET_TOTAL
  value: {{ $a.reflectBudgetTotal | quote }}
{{- end }}
{{- if $a.reflectAllowEphemeralPort }}
- name: MESHPROBE_REFLECT_ALLOW_EPHEMERAL_PORT
  value: "true"
{{- end }}
{{- with $a.stampAuth }}
{{- if ne .sender "off" }}
- name: MESHPROBE_STAMP_AUTH_SENDER
  value: {{ .sender | quote }}
{{- end }}
{{- if ne .reflector "off" }}
- name: MESHPROBE_STAMP_AUTH_REFLECTOR
  value: {{ .reflector | quote }}
{{- end }}
{{- if .keySecret }}
- name: MESHPROBE_STAMP_KEY_FILE
  value: /etc/meshprobe/secrets/stamp/key
{{- if .nextKeyKey }}
- name: MESHPROBE_STAMP_NEXT_KEY_FILE
  value: /etc/meshprobe/secrets/stamp/next-key
{{- end }}
{{- end }}
{{- end }}
- name: MESHPROBE_METRICS_WORST_PEERS
  value: {{ $a.metricsWorstPeers | int | toString | quote }}
- name: MESHPROBE_SHUTDOWN_GRACE
  value: {{ $a.shutdownGrace | quote }}
{{- if $a.interfaces }}
- name: MESHPROBE_INTERFACES
  value: {{ join "," $a.interfaces | quote }}
{{- end }}
{{- if $a.noEbpf }}
- name: MESHPROBE_NO_EBPF
  value: "true"
{{- end }}
- name: MESHPROBE_ATTACH
  value: {{ $a.attach | quote }}
- name: MESHPROBE_EBPF_LOG_LEVEL
  value: {{ $a.ebpfLogLevel | int | toString | quote }}
- name: MESHPROBE_KERNEL_CLOCK
  value: {{ $a.kernelClock | quote }}
- name: MESHPROBE_HANDOFF
  value: {{ $a.handoff | quote }}
{{- if $a.clockSynchronized }}
- name: MESHPROBE_CLOCK_SYNCHRONIZED
  value: "true"
{{- end }}
{{- if $a.hwRxStamps }}
- name: MESHPROBE_HW_RX_STAMPS
  value: "true"
{{- end }}
{{- if $a.hwTxStamps }}
- name: MESHPROBE_HW_TX_STAMPS
  value: "true"
{{- end }}
{{- if not $a.swRxStamps }}
- name: MESHPROBE_NO_SW_RX_STAMPS
  value: "true"
{{- end }}
{{- if eq .Values.zone.source "nodeLabel" }}
- name: MESHPROBE_CONFIG
  value: /etc/meshprobe/agent/agent.toml
{{- else if $a.configToml }}
- name: MESHPROBE_CONFIG
  value: /etc/meshprobe/chart/config.toml
{{- end }}
- name: MESHPROBE_LOG
  value: {{ $a.logLevel | quote }}
{{- with $a.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The agent's seccomp profile (files/seccomp/, README "Seccomp profile") and where it is installed:
<seccomp.kubeletSeccompRoot>/<seccompDir>/<seccompFile>, i.e. localhostProfile
<seccompDir>/<seccompFile>.
*/}}
{{- define "meshprobe.seccompDir" -}}meshprobe{{- end }}
{{- define "meshprobe.seccompFile" -}}meshprobe-agent.json{{- end }}
{{- define "meshprobe.seccompLocalhostProfile" -}}
{{- include "meshprobe.seccompDir" . }}/{{ include "meshprobe.seccompFile" . }}
{{- end }}
{{- define "meshprobe.seccompProfile" -}}
{{- .Files.Get (printf "files/seccomp/%s" (include "meshprobe.seccompFile" .)) }}
{{- end }}
