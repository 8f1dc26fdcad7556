{{/* Names. "hami.fullname" is HAMi's: the release name, or release-chart when it lacks "hami". */}}
{{- define "hami.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.fullname" -}}
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

{{- define "hami.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "hami.scheduler" -}}
{{- printf "%s-scheduler" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.devicePlugin" -}}
{{- printf "%s-device-plugin" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.webhook" -}}
{{- printf "%s-webhook" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret with the serving certificate (tls.crt, tls.key, ca.crt); HAMi's name. */}}
{{- define "hami.tlsSecret" -}}
{{- printf "%s-scheduler-tls" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret with the CA that signs it (never mounted into a pod). */}}
{{- define "hami.caSecret" -}}
{{- printf "%s-scheduler-ca" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret with kube-scheduler's client certificate for the extender (tls.crt, tls.key, ca.crt). */}}
{{- define "hami.clientSecret" -}}
{{- printf "%s-kube-scheduler-client" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* ConfigMap with the CA of kube-apiserver's webhook client certificate, when given inline. */}}
{{- define "hami.webhookClientCA" -}}
{{- printf "%s-webhook-client-ca" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The web UI (`hami ui`): Deployment, Service, ServiceAccount; its serving certificate's Secret. */}}
{{- define "hami.ui" -}}
{{- printf "%s-ui" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.uiTlsSecret" -}}
{{- .Values.ui.tls.existingSecret | default (printf "%s-ui-tls" (include "hami.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{- define "hami.uiSessionSecret" -}}
{{- printf "%s-ui-session" (include "hami.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* DNS names of a Service: name, name.ns, name.ns.svc, name.ns.svc.<clusterDomain>. */}}
{{- define "hami.serviceDNSNames" -}}
{{- $ns := include "hami.namespace" .root -}}
{{- toJson (list .name (printf "%s.%s" .name $ns) (printf "%s.%s.svc" .name $ns) (printf "%s.%s.svc.%s" .name $ns .root.Values.scheduler.tls.clusterDomain)) -}}
{{- end -}}

{{/* Lease of kube-scheduler (HAMi's: the schedulerName) and of hami scheduler. */}}
{{- define "hami.kubeSchedulerLease" -}}
{{- .Values.schedulerName -}}
{{- end -}}

{{- define "hami.extenderLease" -}}
{{- printf "%s-extender" .Values.schedulerName | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.serviceHost" -}}
{{- printf "%s.%s.svc" (include "hami.scheduler" .) (include "hami.namespace" .) -}}
{{- end -}}

{{- define "hami.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hami.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "hami.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hami.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Images. global.imageRegistry, when set, replaces the registry. */}}
{{- define "hami.imageRef" -}}
{{- $registry := .global.imageRegistry | default .image.registry -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository .tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository .tag -}}
{{- end -}}
{{- end -}}

{{- define "hami.image" -}}
{{- include "hami.imageRef" (dict "global" .Values.global "image" .Values.image "tag" (.Values.image.tag | default .Chart.AppVersion | toString)) -}}
{{- end -}}

{{/* kube-scheduler of the cluster's own version unless a tag is given (v1.31.1+k3s1 -> v1.31.1). */}}
{{- define "hami.kubeSchedulerImage" -}}
{{- $ks := .Values.scheduler.kubeScheduler -}}
{{- $tag := $ks.imageTag | default $ks.image.tag | default (regexReplaceAll "^(v[0-9]+\\.[0-9]+\\.[0-9]+).*$" .Capabilities.KubeVersion.Version "${1}") -}}
{{- include "hami.imageRef" (dict "global" .Values.global "image" $ks.image "tag" ($tag | toString)) -}}
{{- end -}}

{{- define "hami.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Extra arguments for a hami process, without HAMi's Go logging flags (-v=N, --v=N, --debug), which
hami does not have: a HAMi values file passes them by default.
*/}}
{{- define "hami.extraArgs" -}}
{{- range . }}
{{- if not (regexMatch "^--?(v(=.*)?|debug)$" (toString .)) }}
- {{ toString . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Extra environment: a list of EnvVar, or HAMi's map of name: value. */}}
{{- define "hami.extraEnvs" -}}
{{- if kindIs "map" . }}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- else if . }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A duration such as 90s, 5m or 1h, in whole seconds. */}}
{{- define "hami.seconds" -}}
{{- $text := toString . -}}
{{- if regexMatch "^[0-9]+$" $text -}}
{{- $text -}}
{{- else if regexMatch "^[0-9]+s$" $text -}}
{{- trimSuffix "s" $text -}}
{{- else if regexMatch "^[0-9]+m$" $text -}}
{{- mul (trimSuffix "m" $text | int) 60 -}}
{{- else if regexMatch "^[0-9]+h$" $text -}}
{{- mul (trimSuffix "h" $text | int) 3600 -}}
{{- else -}}
{{- fail (printf "a duration must look like 90s, 5m or 1h, got %q" $text) -}}
{{- end -}}
{{- end -}}

{{/* The common name of kube-scheduler's client certificate; the only name the extender routes take. */}}
{{- define "hami.mtlsClientName" -}}
{{- .Values.scheduler.extender.mtls.clientName | default "kube-scheduler" -}}
{{- end -}}

{{- define "hami.port" -}}
{{- last (splitList ":" (toString .)) | int -}}
{{- end -}}

{{- define "hami.checkPolicy" -}}
{{- range $key, $value := . }}
{{- $allowed := ternary (list "binpack" "spread" "topology-aware") (list "binpack" "spread") (eq $key "gpuSchedulerPolicy") }}
{{- if not (has $value $allowed) }}
{{- fail (printf "scheduler.defaultSchedulerPolicy.%s: %q is not supported by hami; use %s" $key $value (join " or " $allowed)) }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Resources that kube-scheduler leaves to the extender (ignoredByScheduler), in HAMi's order: the
NVIDIA names, then the other vendors' (those HAMi enables by default, and the optional ones when
their devices.<vendor>.enabled is true).
*/}}
{{- define "hami.managedResources" -}}
{{- $v := .Values -}}
{{- $names := list $v.resourceName $v.resourceMem $v.resourceCores $v.resourceMemPercentage $v.resourcePriority -}}
{{- $names = concat $names (list $v.mluResourceName $v.dcuResourceName $v.dcuResourceMem $v.dcuResourceCores) -}}
{{- $names = concat $names (list "metax-tech.com/gpu" $v.metaxResourceName $v.metaxResourceCore $v.metaxResourceMem) -}}
{{- range $vendor := list "ascend" "mthreads" "enflame" "kunlun" "awsneuron" "iluvatar" "vastai" "biren" "amd" -}}
{{- $device := index $v.devices $vendor | default dict -}}
{{- if or (not (hasKey $device "enabled")) $device.enabled -}}
{{- $names = concat $names ($device.customresources | default list) -}}
{{- end -}}
{{- end -}}
{{- range uniq (compact $names) }}
- name: {{ . | quote }}
  ignoredByScheduler: true
{{- end }}
{{- end -}}

{{/*
The device config (HAMi's device-config.yaml) as YAML: device-config.content when given, else made
from the values: the nvidia section, and the resource names of the vendors whose names HAMi's chart
takes from its top-level values (every other key of a vendor keeps its HAMi default).
*/}}
{{- define "hami.deviceConfig" -}}
{{- $content := index (index .Values "device-config" | default dict) "content" | default "" -}}
{{- if $content -}}
{{- $content -}}
{{- else -}}
nvidia:
  resourceCountName: {{ .Values.resourceName | quote }}
  resourceMemoryName: {{ .Values.resourceMem | quote }}
  resourceMemoryPercentageName: {{ .Values.resourceMemPercentage | quote }}
  resourceCoreName: {{ .Values.resourceCores | quote }}
  resourcePriorityName: {{ .Values.resourcePriority | quote }}
  overwriteEnv: {{ .Values.scheduler.overwriteEnv | toString | eq "true" }}
  defaultMemory: 0
  defaultCores: 0
  defaultGPUNum: 1
  memoryFactor: 1
  deviceSplitCount: {{ .Values.devicePlugin.deviceSplitCount }}
  deviceMemoryScaling: {{ .Values.devicePlugin.deviceMemoryScaling }}
  deviceCoreScaling: {{ .Values.devicePlugin.deviceCoreScaling }}
  gpuCorePolicy: {{ .Values.devices.nvidia.gpuCorePolicy | quote }}
  libCudaLogLevel: {{ .Values.devices.nvidia.libCudaLogLevel }}
cambricon:
  resourceCountName: {{ .Values.mluResourceName | quote }}
  resourceMemoryName: {{ .Values.mluResourceMem | quote }}
  resourceCoreName: {{ .Values.mluResourceCores | quote }}
hygon:
  resourceCountName: {{ .Values.dcuResourceName | quote }}
  resourceMemoryName: {{ .Values.dcuResourceMem | quote }}
  resourceCoreName: {{ .Values.dcuResourceCores | quote }}
metax:
  resourceCountName: "metax-tech.com/gpu"
  resourceVCountName: {{ .Values.metaxResourceName | quote }}
  resourceVMemoryName: {{ .Values.metaxResourceMem | quote }}
  resourceVCoreName: {{ .Values.metaxResourceCore | quote }}
enflame:
  resourceNameGCU: "enflame.com/gcu"
  resourceNameDRSGCU: {{ .Values.enflameResourceNameDRSGCU | quote }}
  resourceNameGCUMemory: {{ .Values.enflameResourceNameGCUMemory | quote }}
  resourceNameGCUCore: {{ .Values.enflameResourceNameGCUCore | quote }}
kunlun:
  resourceCountName: {{ .Values.kunlunResourceName | quote }}
  resourceVCountName: {{ .Values.kunlunResourceVCountName | quote }}
  resourceVMemoryName: {{ .Values.kunlunResourceVMemoryName | quote }}
vastai:
  resourceCountName: {{ .Values.vastaiResourceName | quote }}
biren:
  resourceCountName: {{ .Values.birenResourceName | quote }}
scheduler:
  nodeSchedulerPolicy: {{ .Values.scheduler.defaultSchedulerPolicy.nodeSchedulerPolicy | quote }}
  gpuSchedulerPolicy: {{ .Values.scheduler.defaultSchedulerPolicy.gpuSchedulerPolicy | quote }}
{{- end -}}
{{- end -}}

{{/*
The webhook and extender certificates, made once per render and shared by every template that
needs them (memoised in .Values, which all templates of this chart share during one render).

The CA is kept across upgrades (looked up from its Secret) so the webhook's caBundle and
kube-scheduler's trust do not change; it is replaced when less than caRenewBeforeDays remain,
and the old one stays in the bundle until it expires. The serving certificate is issued again
on every install and upgrade, and so are kube-scheduler's client certificate (scheduler.extender.mtls)
and the UI's serving certificate (ui.enabled); the processes read them again from their files.
Returns JSON: caCert, caKey, caExpires, bundle, cert, key, and clientCert, clientKey, uiCert, uiKey
when they are made.
*/}}
{{- define "hami.tls" -}}
{{- if not (hasKey .Values "__hamiTLS") -}}
{{- $tls := .Values.scheduler.tls -}}
{{- $now := now | unixEpoch | int64 -}}
{{- $existing := lookup "v1" "Secret" (include "hami.namespace" .) (include "hami.caSecret" .) -}}
{{- $ca := dict -}}
{{- $old := "" -}}
{{- if and $existing $existing.data (index $existing.data "ca.crt") (index $existing.data "ca.key") -}}
{{- $expires := index ($existing.metadata.annotations | default dict) "hami.io/ca-expires-unix" | default "0" | int64 -}}
{{- if gt (sub $expires $now) (mul ($tls.caRenewBeforeDays | int64) 86400) -}}
{{- $kept := buildCustomCert (index $existing.data "ca.crt") (index $existing.data "ca.key") -}}
{{- $ca = dict "obj" $kept "cert" $kept.Cert "key" $kept.Key "expires" $expires -}}
{{- else if gt $expires $now -}}
{{- $old = index $existing.data "ca.crt" | b64dec -}}
{{- end -}}
{{- end -}}
{{- if not $ca.cert -}}
{{- $days := $tls.caValidityDays | int -}}
{{- $made := genCA (printf "%s-ca" (include "hami.scheduler" .)) $days -}}
{{- $ca = dict "obj" $made "cert" $made.Cert "key" $made.Key "expires" (add $now (mul $days 86400)) -}}
{{- end -}}
{{- $host := include "hami.scheduler" . -}}
{{- $ns := include "hami.namespace" . -}}
{{- $dns := list $host (printf "%s.%s" $host $ns) (printf "%s.%s.svc" $host $ns) (printf "%s.%s.svc.%s" $host $ns $tls.clusterDomain) -}}
{{- $ips := list -}}
{{- $custom := .Values.scheduler.admissionWebhook.customURL -}}
{{- if $custom.enabled -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+){3}$" (toString $custom.host) -}}
{{- $ips = append $ips (toString $custom.host) -}}
{{- else -}}
{{- $dns = append $dns (toString $custom.host) -}}
{{- end -}}
{{- end -}}
{{- $days := $tls.certValidityDays | int -}}
{{- $leaf := genSignedCert $host $ips $dns $days $ca.obj -}}
{{- $bundle := $ca.cert -}}
{{- if $old -}}
{{- $bundle = printf "%s\n%s" (trimSuffix "\n" $ca.cert) $old -}}
{{- end -}}
{{- $made := dict "caCert" $ca.cert "caKey" $ca.key "caExpires" (toString $ca.expires) "bundle" $bundle "cert" $leaf.Cert "key" $leaf.Key -}}
{{- if .Values.scheduler.extender.mtls.enabled -}}
{{- /* kube-scheduler's client certificate: no names to serve, only its common name, which hami
scheduler's --extender-allowed-names checks (so the serving certificate, from the same CA, cannot bind). */ -}}
{{- $client := genSignedCert (include "hami.mtlsClientName" .) (list) (list) $days $ca.obj -}}
{{- $_ := set $made "clientCert" $client.Cert -}}
{{- $_ := set $made "clientKey" $client.Key -}}
{{- end -}}
{{- if and .Values.ui.enabled (not .Values.ui.tls.existingSecret) -}}
{{- $uiHost := include "hami.ui" . -}}
{{- $uiDNS := concat (include "hami.serviceDNSNames" (dict "root" . "name" $uiHost) | fromJsonArray) (.Values.ui.tls.dnsNames | default list) -}}
{{- $ui := genSignedCert $uiHost (list) $uiDNS $days $ca.obj -}}
{{- $_ := set $made "uiCert" $ui.Cert -}}
{{- $_ := set $made "uiKey" $ui.Key -}}
{{- end -}}
{{- $_ := set .Values "__hamiTLS" $made -}}
{{- end -}}
{{- toJson (get .Values "__hamiTLS") -}}
{{- end -}}
