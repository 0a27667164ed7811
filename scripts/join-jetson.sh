#!/usr/bin/env bash
# Join an NVIDIA Jetson (JetPack 6, L4T r36) to a K3s cluster as a VisionInApp edge node.
#
#   sudo scripts/join-jetson.sh --server https://edge.example.com:6443 --token K10abc...::server:xyz \
#        [--site plant-a] [--name jetson-gate-01] [--k3s-version v1.31.4+k3s1] [--dry-run]
#
# What it does: checks that this is a Jetson with the NVIDIA container toolkit, installs the K3s agent
# with the NVIDIA runtime as containerd's default (so edge pods see the GPU without a RuntimeClass),
# and registers the node with the label and taint that EdgeDeployments select and tolerate:
#   label visioninapp.io/edge=true (and visioninapp.io/site=<site>), taint visioninapp.io/edge=true:NoSchedule
set -euo pipefail

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

server="" token="" site="" name="$(hostname)" k3s_version="v1.31.4+k3s1" dry_run=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --server) server="$2"; shift 2 ;;
    --token) token="$2"; shift 2 ;;
    --site) site="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --k3s-version) k3s_version="$2"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$server" && -n "$token" ]] || { echo "error: --server and --token are required (see --help)" >&2; exit 2; }
[[ "$server" == https://* ]] || { echo "error: --server must be the K3s server URL, https://HOST:6443" >&2; exit 2; }

labels=(--node-label "visioninapp.io/edge=true")
[[ -n "$site" ]] && labels+=(--node-label "visioninapp.io/site=${site}")
args=(agent --node-name "$name" --default-runtime nvidia "${labels[@]}"
      --node-taint "visioninapp.io/edge=true:NoSchedule")

if $dry_run; then
  echo "would run: curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION=${k3s_version} K3S_URL=${server} K3S_TOKEN=*** sh -s - ${args[*]}"
  exit 0
fi

[[ "$(uname -m)" == aarch64 ]] || { echo "error: not an arm64 Jetson ($(uname -m))" >&2; exit 1; }
[[ -f /etc/nv_tegra_release ]] || { echo "error: /etc/nv_tegra_release missing: flash JetPack 6 first" >&2; exit 1; }
command -v nvidia-container-runtime >/dev/null || {
  echo "error: nvidia-container-runtime missing: sudo apt-get install -y nvidia-container-toolkit" >&2; exit 1; }
[[ $EUID -eq 0 ]] || { echo "error: run as root (sudo)" >&2; exit 1; }

echo "installing the K3s ${k3s_version} agent on ${name}, joining ${server}"
curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION="$k3s_version" K3S_URL="$server" K3S_TOKEN="$token" \
  sh -s - "${args[@]}"
echo "joined: on the server, 'kubectl get node ${name} --show-labels' shows visioninapp.io/edge=true"
