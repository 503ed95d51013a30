{{/* Names and labels. */}}
{{- define "aigc.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aigc.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "template"). */}}
{{- define "aigc.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aigc.componentLabels" -}}
{{ include "aigc.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aigc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "aigc.bridgeImage" -}}
{{- printf "%s:%s" .Values.bridgeImage.repository (default .Chart.AppVersion .Values.bridgeImage.tag) -}}
{{- end -}}

{{- define "aigc.dashboardHost" -}}
{{- default (printf "dashboard.%s" .Values.domain) .Values.ingress.host -}}
{{- end -}}

{{- define "aigc.publicUrl" -}}
{{- default (printf "https://%s" (include "aigc.dashboardHost" .)) .Values.auth.publicUrl -}}
{{- end -}}

{{/* The gRPC target every client in the chart dials for a component, (dict "root" $ "component" "template"):
the headless Service's DNS name, one A record per ready pod. Clients balance round_robin over those addresses
(the services: servers.<name>.target with aigc_gateway.config.CLIENT_CHANNEL_OPTIONS; the bridge: its backends),
because one HTTP/2 connection to a ClusterIP Service would carry every call of a client to one pod. */}}
{{- define "aigc.grpcTarget" -}}
{{- printf "dns:///%s-%s-grpc.%s.svc:%d" (include "aigc.fullname" .root) .component .root.Release.Namespace (int .root.Values.ports.grpc) -}}
{{- end -}}

{{/* The gateway configuration file (docs/configuration.md): what the chart derives, then .Values.config. */}}
{{- define "aigc.config" -}}
{{- $fullname := include "aigc.fullname" . -}}
{{- $grpc := int .Values.ports.grpc -}}
{{- $servers := dict "metrics_listen" (printf "0.0.0.0:%d" (int .Values.ports.metrics)) -}}
{{- range $name := list "template" "instance" "auth" "usersync" -}}
{{- $_ := set $servers $name (dict "listen" (printf "0.0.0.0:%d" $grpc) "target" (include "aigc.grpcTarget" (dict "root" $ "component" $name))) -}}
{{- end -}}
{{- $derived := dict
  "namespaces" .Values.namespaces
  "gss_labels" .Values.gssLabels
  "domain" .Values.domain
  "data_dir" "/tmp/aigc-gateway"
  "servers" $servers
  "logging" (dict "level" .Values.logLevel "json" true)
  "oidc" (dict "issuer" .Values.oidc.issuer "audience" .Values.oidc.audience "client_id" .Values.oidc.clientId
               "admin_role" .Values.oidc.adminRole "roles_claim" .Values.oidc.rolesClaim)
  "auth" (dict "http_listen" (printf "0.0.0.0:%d" (int .Values.ports.authHttp)) "public_url" (include "aigc.publicUrl" .)
               "cookie_secure" .Values.auth.cookieSecure "allow_admin_access" .Values.auth.allowAdminAccess
               "proxy" .Values.auth.proxy)
  "usersync" (dict "http_listen" (printf "0.0.0.0:%d" (int .Values.ports.usersyncHttp))
                   "logto_endpoint" .Values.logto.endpoint "logto_app_id" .Values.logto.appId)
-}}
{{- toYaml (mergeOverwrite $derived (deepCopy .Values.config)) -}}
{{- end -}}

{{/* One secret entry as an environment variable: (dict "root" $ "env" NAME "key" KEYNAME "optional" bool). */}}
{{- define "aigc.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.secrets.existingSecret }}
      key: {{ index .root.Values.secrets.keys .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{- define "aigc.affinity" -}}
{{- if eq .root.Values.podAntiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "aigc.selector" . | nindent 14 }}
{{- else if eq .root.Values.podAntiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "aigc.selector" . | nindent 12 }}
{{- end }}
{{- end -}}

{{/* Scheduling and security settings shared by every pod. */}}
{{- define "aigc.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}
