{{/*
Names, labels, images and the derived settings every template shares.
Object names follow Tencent's chart (eklet-<release>, eks-admission-<release>, scheduler-<release>),
so `kubectl get pod -n kube-system | grep resilience` reads as in its walkthrough.
*/}}

{{- define "tke-resilience.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name of a component: (dict "root" $ "component" "eklet") */}}
{{- define "tke-resilience.name" -}}
{{ printf "%s-%s" .component .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tke-resilience.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tke-resilience.labels" -}}
{{ include "tke-resilience.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tke-resilience
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "tke-resilience.chart" .root }}
{{- end }}

{{/* Labels for objects that belong to the release as a whole (the credentials, eks-config). */}}
{{- define "tke-resilience.commonLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tke-resilience
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "tke-resilience.chart" . }}
{{- end }}

{{/*
The tke-resilience image for a component: (dict "root" $ "image" .Values.eklet.image "field" "eklet.image.ref").
An image reference left over from Tencent's chart would run a different program with our arguments,
so it is refused with the field to change.
*/}}
{{- define "tke-resilience.image" -}}
{{- $ref := .image.ref | default "" -}}
{{- if regexMatch "tkeimages/(eklet|eks-admission-controller|hyperkube)" $ref -}}
{{- fail (printf "%s %q is an image of Tencent's eklet chart, not tke-resilience: remove %s (or point it at a tke-resilience image)" .field $ref .field) -}}
{{- end -}}
{{- if $ref -}}
{{ $ref }}
{{- else -}}
{{ printf "%s:%s" .root.Values.image.repository (.root.Values.image.tag | default .root.Chart.AppVersion) }}
{{- end -}}
{{- end }}

{{- define "tke-resilience.pullPolicy" -}}
{{ .image.pullPolicy | default .root.Values.image.pullPolicy }}
{{- end }}

{{/* "true" on the TKE distribution (its server version contains "tke" or "tce"), else "". */}}
{{- define "tke-resilience.isTKEDistribution" -}}
{{- $v := .Capabilities.KubeVersion.Version -}}
{{- if or (contains "tke" $v) (contains "tce" $v) }}true{{ end -}}
{{- end }}

{{- define "tke-resilience.schedulerEnabled" -}}
{{- if and .Values.scheduler.enabled (not (include "tke-resilience.isTKEDistribution" .)) }}true{{ end -}}
{{- end }}

{{/*
The kube-scheduler image: the cluster's own version, so that scheduler and apiserver never skew.
Vendor suffixes (v1.30.4-gke.1, v1.29.3+k3s1) are cut to the upstream release they build on.
*/}}
{{- define "tke-resilience.schedulerImage" -}}
{{- $img := .Values.scheduler.image -}}
{{- if $img.ref -}}
{{ $img.ref }}
{{- else -}}
{{- $tag := $img.tag -}}
{{- if not $tag -}}
{{- $tag = regexFind "^v[0-9]+\\.[0-9]+\\.[0-9]+" .Capabilities.KubeVersion.Version -}}
{{- end -}}
{{- if not $tag -}}
{{- $tag = printf "v%s.%s.0" (regexFind "[0-9]+" .Capabilities.KubeVersion.Major) (regexFind "[0-9]+" .Capabilities.KubeVersion.Minor) -}}
{{- end -}}
{{ printf "%s:%s" $img.repository $tag }}
{{- end -}}
{{- end }}

{{/* Short region aliases as the EKS API documents them (gz = ap-guangzhou, cq = ap-chongqing, ...). */}}
{{- define "tke-resilience.regionLong" -}}
{{- $aliases := dict
  "bj" "ap-beijing" "sh" "ap-shanghai" "gz" "ap-guangzhou" "cd" "ap-chengdu" "cq" "ap-chongqing"
  "nj" "ap-nanjing" "hk" "ap-hongkong" "sg" "ap-singapore" "tsn" "ap-tianjin" "kr" "ap-seoul"
  "jp" "ap-tokyo" "th" "ap-bangkok" "in" "ap-mumbai" "usw" "na-siliconvalley" "use" "na-ashburn"
  "de" "eu-frankfurt" "sao" "sa-saopaulo" "tpe" "ap-taipei" "jkt" "ap-jakarta" -}}
{{- $c := .Values.cloud -}}
{{- if $c.regionLong -}}
{{ $c.regionLong }}
{{- else if hasKey $aliases ($c.regionShort | default "") -}}
{{ get $aliases $c.regionShort }}
{{- else if $c.regionShort -}}
{{- fail (printf "cloud.regionShort %q is not a known region alias; set cloud.regionLong (e.g. ap-guangzhou)" $c.regionShort) -}}
{{- else -}}
{{- fail "cloud.regionLong (or cloud.regionShort) is required, e.g. regionLong: ap-guangzhou" -}}
{{- end -}}
{{- end }}

{{/* "true" when eklet runs its pods in another Kubernetes cluster (eklet.provider=kubernetes), else "". */}}
{{- define "tke-resilience.kubernetesProvider" -}}
{{- if eq (.Values.eklet.provider | default "tencent") "kubernetes" }}true{{ end -}}
{{- end }}

{{/*
Identifies this cluster's sandboxes in the cloud and names eklet's leader-election Lease. The
kubernetes provider uses no VPC, so cloud.uniqueID alone; and it puts the id into the names and
labels of target pods and namespaces, so it must be a DNS label.
*/}}
{{- define "tke-resilience.clusterID" -}}
{{- $id := .Values.cloud.uniqueID | default .Values.cloud.vpcID -}}
{{- if include "tke-resilience.kubernetesProvider" . -}}
{{- $id = .Values.cloud.uniqueID -}}
{{- if not $id -}}
{{- fail "cloud.uniqueID is required with eklet.provider=kubernetes: it names this cluster's pods and namespaces in the target cluster (lowercase letters, digits and '-')" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $id) -}}
{{- fail (printf "cloud.uniqueID %q: with eklet.provider=kubernetes it names target pods and namespaces, so use lowercase letters, digits and '-' (at most 63)" $id) -}}
{{- end -}}
{{- end -}}
{{ $id }}
{{- end }}

{{/* Where the target kubeconfig Secret is mounted in the eklet container. */}}
{{- define "tke-resilience.targetKubeconfigDir" -}}
/etc/eklet/target
{{- end }}

{{- define "tke-resilience.credentialsSecret" -}}
{{ .Values.cloud.existingSecret | default (printf "%s-cloud-credentials" .Release.Name | trunc 63 | trimSuffix "-") }}
{{- end }}

{{/* The global switch as ConfigMap eks-config stores it; Tencent's chart quoted it ("\"true\""). */}}
{{- define "tke-resilience.autoScaleEKS" -}}
{{- $v := .Values.eksAdmission.autoScaleEKS -}}
{{- if not (kindIs "invalid" $v) -}}
{{ $v | toString | trim | trimAll "\"" | trim | lower }}
{{- end -}}
{{- end }}

{{/*
tke-policy's flags, which eklet, eks-admission and the extender all take, so that the three give
the same answer for a pod.
*/}}
{{- define "tke-resilience.policyArgs" -}}
- --eks-config-namespace={{ .Release.Namespace }}
{{- with .Values.policy }}
{{- if .forbiddenNamespaces }}
- --forbidden-namespaces={{ join "," .forbiddenNamespaces }}
{{- end }}
{{- range .fixedIPAnnotations }}
- --fixed-ip-annotation={{ . }}
{{- end }}
- --fixed-ip-check={{ not .allowFixedIP }}
{{- if .localSwitchOverrides }}
- --local-switch-overrides
{{- end }}
{{- end }}
{{- end }}

{{/*
Required node affinity that keeps a component off virtual nodes (a virtual node cannot run it and
eklet must never depend on itself), merged with the user's affinity.
*/}}
{{- define "tke-resilience.affinity" -}}
{{- $user := deepCopy (.affinity | default dict) -}}
{{- $term := dict "matchExpressions" (list (dict "key" "node.kubernetes.io/instance-type" "operator" "NotIn" "values" (list "eklet"))) -}}
{{- $nodeAffinity := $user.nodeAffinity | default dict -}}
{{- $required := $nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution | default dict -}}
{{- $terms := $required.nodeSelectorTerms | default list -}}
{{- if $terms -}}
{{- $merged := list -}}
{{- range $terms -}}
{{- $t := deepCopy . -}}
{{- $_ := set $t "matchExpressions" (append ($t.matchExpressions | default list) (first $term.matchExpressions)) -}}
{{- $merged = append $merged $t -}}
{{- end -}}
{{- $terms = $merged -}}
{{- else -}}
{{- $terms = list $term -}}
{{- end -}}
{{- $_ := set $required "nodeSelectorTerms" $terms -}}
{{- $_ := set $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required -}}
{{- $_ := set $user "nodeAffinity" $nodeAffinity -}}
{{- if and (not $user.podAntiAffinity) (gt (int .replicas) 1) -}}
{{- $spread := dict "weight" 100 "podAffinityTerm" (dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (fromYaml (include "tke-resilience.selectorLabels" .)))) -}}
{{- $_ := set $user "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list $spread)) -}}
{{- end -}}
{{ toYaml $user }}
{{- end }}

{{/* The container security context all our containers run with. */}}
{{- define "tke-resilience.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The shared scheduler configuration (files/tke-scheduler.yaml, a symlink to deploy/tke-scheduler.yaml
that helm follows when it loads or packages the chart) adapted
to running in the cluster: the in-cluster client instead of a kubeconfig, leader election on a Lease
named tke-scheduler in the release namespace, and the extender at the sidecar's port.
*/}}
{{- define "tke-resilience.schedulerConfig" -}}
{{- $raw := .Files.Get "files/tke-scheduler.yaml" -}}
{{- if not $raw -}}
{{- fail "files/tke-scheduler.yaml is missing from the chart" -}}
{{- end -}}
{{- $cfg := fromYaml $raw -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "files/tke-scheduler.yaml: %s" $cfg.Error) -}}
{{- end -}}
{{- if ne ($cfg.kind | default "") "KubeSchedulerConfiguration" -}}
{{- fail "files/tke-scheduler.yaml is not a KubeSchedulerConfiguration" -}}
{{- end -}}
{{- $client := $cfg.clientConnection | default dict -}}
{{- $_ := unset $client "kubeconfig" -}}
{{- if $client -}}
{{- $_ := set $cfg "clientConnection" $client -}}
{{- else -}}
{{- $_ := unset $cfg "clientConnection" -}}
{{- end -}}
{{- $election := dict "leaderElect" .Values.scheduler.leaderElect "resourceLock" "leases" "resourceName" "tke-scheduler" "resourceNamespace" .Release.Namespace -}}
{{- $_ := set $cfg "leaderElection" (merge $election ($cfg.leaderElection | default dict)) -}}
{{- $extenders := list -}}
{{- range ($cfg.extenders | default list) -}}
{{- $e := deepCopy . -}}
{{- $_ := set $e "urlPrefix" (printf "http://127.0.0.1:%d/scheduler" (int $.Values.scheduler.extender.port)) -}}
{{- $_ := set $e "enableHTTPS" false -}}
{{- $extenders = append $extenders $e -}}
{{- end -}}
{{- if not $extenders -}}
{{- fail "files/tke-scheduler.yaml has no extender; tke-scheduler needs the LOCAL_REPLICAS extender" -}}
{{- end -}}
{{- $_ := set $cfg "extenders" $extenders -}}
{{ toYaml $cfg }}
{{- end }}

{{/*
Whole seconds of a Go duration made of h, m and s parts (the schema of eklet.uninstall.timeout
allows nothing else), for the drain Job's activeDeadlineSeconds.
*/}}
{{- define "tke-resilience.durationSeconds" -}}
{{- $d := . | toString -}}
{{- $h := regexFind "[0-9]+h" $d | trimSuffix "h" | default "0" | int -}}
{{- $m := regexFind "[0-9]+m" $d | trimSuffix "m" | default "0" | int -}}
{{- $s := regexFind "[0-9]+s" $d | trimSuffix "s" | default "0" | int -}}
{{ add (mul $h 3600) (mul $m 60) $s }}
{{- end }}
