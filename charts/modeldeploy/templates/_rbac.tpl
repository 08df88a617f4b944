{{/*
The rules the operator needs, and no more. tests/chart/rbac_contract.py holds the same list; the chart
tests compare the rendered roles with it and the e2e tests run the operator with these roles.
*/}}

{{/* Rules inside each watched namespace (or cluster-wide in all-namespaces mode). */}}
{{- define "modeldeploy.rbac.namespacedRules" -}}
- apiGroups: ["modeldeploy.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["modeldeploy.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch", "update"]
# Shared servers (docs/packing.md): read, status written; their model lists are ConfigMaps.
- apiGroups: ["modeldeploy.dev"]
  resources: ["modelservers"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["modeldeploy.dev"]
  resources: ["modelservers/status"]
  verbs: ["get", "patch", "update"]
# configmaps: a shared server's model list is one (written); and the calibration texts of
# spec.triton.calibration count in the repository's digest (read).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# get pods/log: the only way to read a running builder's progress reports (status.modelRepository.progress
# and DownloadStalled). Read only, the builder container's last lines, at most every few seconds while it
# runs; the builder itself needs no API access (its pods keep automountServiceAccountToken off).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# list: a cache claim's Events are the only place that says why it is not bound.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Cluster-scoped reads: whether the ServiceMonitor and KEDA CRDs exist; and the nodes' GPU products
and allocatable GPUs, so that a request no node can satisfy is reported at once (status reason
Unschedulable) instead of only after the scheduler has failed to place the pods. */}}
{{- define "modeldeploy.rbac.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
{{- end -}}

{{/* kopf keeps its peers' keep-alives in the status of these objects. */}}
{{- define "modeldeploy.rbac.clusterPeeringRules" -}}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}

{{- define "modeldeploy.rbac.namespacedPeeringRules" -}}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}
