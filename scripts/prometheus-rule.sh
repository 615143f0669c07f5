#!/usr/bin/env bash
# Writes deploy/prometheus/prometheusrule.yaml (a PrometheusRule for the Prometheus Operator)
# from deploy/prometheus/rules.yaml (the plain rules file, the source): the same groups under
# spec, comments included. tests/prometheus_rules.rs fails when the two differ.
set -euo pipefail
cd "$(dirname "$0")/.."
src=deploy/prometheus/rules.yaml
out=deploy/prometheus/prometheusrule.yaml
{
  cat <<'HEADER'
# GENERATED from rules.yaml by scripts/prometheus-rule.sh: edit rules.yaml, then run the script.
#
# acrpull's alerting rules as a PrometheusRule (Prometheus Operator, monitoring.coreos.com/v1).
# Your Prometheus picks it up only if its ruleSelector matches these labels (kube-prometheus-
# stack's default wants release: <its Helm release name>) and its ruleNamespaceSelector
# includes acrpull-system: add the label it wants. Azure Monitor managed Prometheus does not
# read PrometheusRule; see deploy/README.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: acrpull
  namespace: acrpull-system
  labels:
    app.kubernetes.io/name: acrpull
    app.kubernetes.io/component: controller
spec:
HEADER
  # Drop the source's leading comment block; indent the rest under spec.
  awk 'started || !/^#/ { started = 1; print }' "$src" | sed -e 's/^\(.\)/  \1/'
} >"$out"
echo "wrote $out"
