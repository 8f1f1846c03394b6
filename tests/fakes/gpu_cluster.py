"""Realistic GPU cluster objects for the fake apiserver and moto: EKS nodes, workload pods,
Kubeflow Notebooks with the StatefulSet and pod the notebook controller makes for them.

The shapes follow what the real components write: nodes as an EKS managed nodegroup registers
them (labels, NVIDIA device plugin's ``nvidia.com/gpu`` capacity); a Notebook as Kubeflow's Jupyter
web app creates it (``notebook_template.yaml``: server-type and creator annotations, GPUs as
limits); its StatefulSet as ``generateStatefulSet`` in the notebook controller makes it (controlled
by the Notebook through a ``kubeflow.org/v1beta1`` owner reference, ``statefulset`` and
``notebook-name`` labels, port 8888, ``NB_PREFIX``, ``fsGroup: 100``); pods with Istio's injected
``istio-init``/``istio-proxy``, a projected service account token, env and a full status.
Notebooks go through the fake's validating create (the real CRD's schema); the bulk objects are
seeded, which is what makes 20k pods cheap to set up.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes.apiserver import FakeApiServer

JSON = dict[str, Any]
ACCOUNT_ID = "123456789012"
CLUSTER = "kubeflow"
EPOCH = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
ISTIO_PROXY = "docker.io/istio/proxyv2:1.24.3"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(*parts: str, n: int = 10) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def node(
    name: str,
    nodegroup: str,
    instance_type: str,
    gpus: int,
    created: datetime = EPOCH,
    zone: str = "us-east-1a",
) -> JSON:
    region = zone[:-1]
    capacity = {
        "cpu": "8",
        "ephemeral-storage": "104845292Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "32386544Ki",
        "pods": "58",
    }
    allocatable = {
        "cpu": "7910m",
        "ephemeral-storage": "95551679124",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "31369712Ki",
        "pods": "58",
    }
    if gpus:
        capacity["nvidia.com/gpu"] = allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "creationTimestamp": rfc3339(created),
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": instance_type,
                "beta.kubernetes.io/os": "linux",
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "eks.amazonaws.com/nodegroup": nodegroup,
                "eks.amazonaws.com/nodegroup-image": "ami-0c7217cdde317cfec",
                "failure-domain.beta.kubernetes.io/region": region,
                "failure-domain.beta.kubernetes.io/zone": zone,
                "k8s.io/cloud-provider-aws": _digest(name),
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": instance_type,
                "topology.k8s.aws/zone-id": "use1-az1",
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": zone,
            },
            "annotations": {
                "alpha.kubernetes.io/provided-node-ip": "10.0.1.23",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "providerID": f"aws:///{zone}/i-0{_digest(name, n=16)}",
            "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}] if gpus else [],
        },
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": f"KubeletHas{r}",
                    "message": m,
                    "lastHeartbeatTime": rfc3339(created),
                    "lastTransitionTime": rfc3339(created),
                }
                for t, r, m in (
                    ("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory"),
                    ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                    ("PIDPressure", "SufficientPID", "kubelet has sufficient PID"),
                )
            ]
            + [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": rfc3339(created),
                    "lastTransitionTime": rfc3339(created),
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.1.23"},
                {"type": "InternalDNS", "address": name},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.7.27",
                "kernelVersion": "6.1.132-147.221.amzn2023.x86_64",
                "kubeProxyVersion": "v1.31.7-eks",
                "kubeletVersion": "v1.31.7-eks-473151a",
                "operatingSystem": "linux",
                "osImage": "Amazon Linux 2023.7.20250414",
                "machineID": _digest(name, n=32),
                "systemUUID": _digest("uuid", name, n=32),
                "bootID": str(uuid.uuid4()),
            },
        },
    }


def _owner(api_version: str, kind: str, name: str, uid: str) -> JSON:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _istio_init() -> JSON:
    return {
        "name": "istio-init",
        "image": ISTIO_PROXY,
        "args": [
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--log_output_level=default:info",
        ],
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": False,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "runAsUser": 0,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def _istio_proxy(namespace: str, name: str) -> JSON:
    env = [
        {"name": k, "value": v}
        for k, v in (
            ("PILOT_CERT_PROVIDER", "istiod"),
            ("CA_ADDR", "istiod.istio-system.svc:15012"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
            ("ISTIO_META_WORKLOAD_NAME", name),
            ("ISTIO_META_MESH_ID", "cluster.local"),
            ("TRUST_DOMAIN", "cluster.local"),
            ("ISTIO_META_OWNER", f"kubernetes://apis/v1/namespaces/{namespace}"),
        )
    ]
    env += [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {
            "name": "POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
        {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
    ]
    return {
        "name": "istio-proxy",
        "image": ISTIO_PROXY,
        "args": [
            "proxy",
            "sidecar",
            "--domain",
            "$(POD_NAMESPACE).svc.cluster.local",
            "--proxyLogLevel=warning",
            "--proxyComponentLogLevel=misc:error",
            "--log_output_level=default:info",
        ],
        "env": env,
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": {
            "failureThreshold": 4,
            "httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
            "periodSeconds": 15,
            "successThreshold": 1,
            "timeoutSeconds": 3,
        },
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
        "volumeMounts": [
            {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
            {"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"},
            {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
            {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
            {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def _volumes(claim: str | None) -> list[JSON]:
    volumes: list[JSON] = [
        {"name": "workload-socket", "emptyDir": {}},
        {"name": "credential-socket", "emptyDir": {}},
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {
            "name": "istio-podinfo",
            "downwardAPI": {
                "defaultMode": 420,
                "items": [
                    {"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}},
                    {
                        "path": "annotations",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations"},
                    },
                ],
            },
        },
        {
            "name": "istio-token",
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "istio-ca",
                            "expirationSeconds": 43200,
                            "path": "istio-token",
                        }
                    }
                ],
            },
        },
        {
            "name": "kube-api-access",
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ],
            },
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if claim:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
    return volumes


def _status(containers: list[JSON], phase: str, node_name: str | None, started: datetime) -> JSON:
    if phase == "Pending" or node_name is None:
        return {
            "phase": "Pending",
            "qosClass": "Burstable",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastProbeTime": None,
                    "lastTransitionTime": rfc3339(started),
                    "message": "0/12 nodes are available: 12 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    statuses = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": f"{c['image']}@sha256:{_digest(c['image'], n=64)}",
            "containerID": f"containerd://{_digest(c['name'], rfc3339(started), n=64)}",
            "ready": True,
            "restartCount": 0,
            "started": True,
            "state": {"running": {"startedAt": rfc3339(started)}},
            "lastState": {},
        }
        for c in containers
    ]
    return {
        "phase": phase,
        "hostIP": "10.0.1.23",
        "podIP": "10.0.7.41",
        "podIPs": [{"ip": "10.0.7.41"}],
        "startTime": rfc3339(started),
        "qosClass": "Burstable",
        "conditions": [
            {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": rfc3339(started)}
            for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
        ],
        "containerStatuses": statuses,
    }


def workload_pod(
    namespace: str,
    name: str,
    *,
    node_name: str | None,
    gpus: int = 0,
    owner: tuple[str, str, str] | None = None,
    phase: str = "Running",
    started: datetime = EPOCH,
    image: str = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
) -> JSON:
    """A training or serving pod: the main container (with GPUs as limits, which the apiserver
    copies to requests), Istio's sidecar and init container, env, volumes and a full status.
    ``owner``: (apiVersion, kind, name) of its controller."""
    resources: JSON = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "30Gi"}}
    if gpus:
        resources["requests"]["nvidia.com/gpu"] = resources["limits"]["nvidia.com/gpu"] = str(gpus)
    main = {
        "name": "main",
        "image": image,
        "command": ["python", "-m", "torch.distributed.run"],
        "args": ["--nproc-per-node=1", "train.py", "--epochs=30", "--data=/data/imagenet"],
        "env": [
            {"name": k, "value": v}
            for k, v in (
                ("PYTHONUNBUFFERED", "1"),
                ("NCCL_DEBUG", "WARN"),
                ("MASTER_PORT", "23456"),
                ("WORLD_SIZE", "1"),
                ("RANK", "0"),
                ("HF_HOME", "/data/.cache/huggingface"),
            )
        ]
        + [{"name": "AWS_ROLE_ARN", "value": f"arn:aws:iam::{ACCOUNT_ID}:role/{namespace}-role"}],
        "resources": resources,
        "volumeMounts": [
            {"mountPath": "/data", "name": "data"},
            {"mountPath": "/dev/shm", "name": "dshm"},
            {
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "name": "kube-api-access",
                "readOnly": True,
            },
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    containers = [main, _istio_proxy(namespace, name)]
    meta: JSON = {
        "name": name,
        "namespace": namespace,
        "creationTimestamp": rfc3339(started),
        "labels": {
            "app": name.rsplit("-", 1)[0],
            "security.istio.io/tlsMode": "istio",
            "service.istio.io/canonical-name": name.rsplit("-", 1)[0],
            "service.istio.io/canonical-revision": "latest",
        },
        "annotations": {
            "istio.io/rev": "default",
            "kubectl.kubernetes.io/default-container": "main",
            "sidecar.istio.io/status": '{"initContainers":["istio-init"],"containers":'
            '["istio-proxy"],"volumes":["workload-socket","credential-socket",'
            '"workload-certs","istio-envoy","istio-data","istio-podinfo","istio-token",'
            '"istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}',
        },
    }
    if owner is not None:
        meta["ownerReferences"] = [_owner(*owner, uid=str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(owner))))]
    spec: JSON = {
        "containers": containers,
        "initContainers": [_istio_init()],
        "volumes": _volumes(f"{name}-data"),
        "serviceAccountName": "default-editor",
        "serviceAccount": "default-editor",
        "restartPolicy": "Never" if owner and owner[1] != "StatefulSet" else "Always",
        "schedulerName": "default-scheduler",
        "dnsPolicy": "ClusterFirst",
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
        "securityContext": {"fsGroup": 100},
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ]
        + ([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if gpus else []),
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": _status(containers, phase, node_name, started),
    }


def notebook(
    namespace: str,
    name: str,
    *,
    gpus: int = 1,
    stopped_at: datetime | None = None,
    server_type: str = "jupyter",
    creator: str = "alice@example.com",
    image: str = "ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-pytorch-cuda-full:v1.10.0",
) -> JSON:
    """A Notebook as Kubeflow's Jupyter web app posts it (``notebook_template.yaml`` + the form)."""
    container: JSON = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi"},
            "limits": {"cpu": "4.8", "memory": "19.2Gi"},
        },
        "volumeMounts": [
            {"mountPath": "/dev/shm", "name": "dshm"},
            {"mountPath": "/home/jovyan", "name": f"{name}-workspace"},
        ],
        "env": [],
    }
    if gpus:
        container["resources"]["limits"]["nvidia.com/gpu"] = str(gpus)
    annotations = {
        "notebooks.kubeflow.org/server-type": server_type,
        "notebooks.kubeflow.org/creator": creator,
    }
    if server_type != "jupyter":
        annotations["notebooks.kubeflow.org/http-rewrite-uri"] = "/"
    if stopped_at is not None:
        annotations["kubeflow-resource-stopped"] = rfc3339(stopped_at)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Notebook",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name},
            "annotations": annotations,
        },
        "spec": {
            "template": {
                "spec": {
                    "serviceAccountName": "default-editor",
                    "containers": [container],
                    "volumes": [
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {
                            "name": f"{name}-workspace",
                            "persistentVolumeClaim": {"claimName": f"{name}-workspace"},
                        },
                    ],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                }
            }
        },
    }


def notebook_statefulset(nb: JSON) -> JSON:
    """``generateStatefulSet``: controlled by the Notebook (v1beta1 owner reference, as the controller
    is built on the v1beta1 types), replicas 0 when stopped, the pod template from the Notebook's."""
    meta = nb["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    template = dict(nb["spec"]["template"]["spec"])
    container = dict(template["containers"][0])
    container.setdefault("workingDir", "/home/jovyan")
    container.setdefault("ports", [{"containerPort": 8888, "name": "notebook-port", "protocol": "TCP"}])
    container["env"] = [
        *container.get("env", []),
        {"name": "NB_PREFIX", "value": f"/notebook/{namespace}/{name}"},
    ]
    template["containers"] = [container, *template["containers"][1:]]
    template.setdefault("securityContext", {"fsGroup": 100})
    stopped = "kubeflow-resource-stopped" in (meta.get("annotations") or {})
    labels = {"statefulset": name, "notebook-name": name, **(meta.get("labels") or {})}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if "kubectl" not in k and "notebook" not in k
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": meta.get("creationTimestamp"),
            "ownerReferences": [_owner("kubeflow.org/v1beta1", "Notebook", name, meta["uid"])],
        },
        "spec": {
            "replicas": 0 if stopped else 1,
            "selector": {"matchLabels": {"statefulset": name}},
            "serviceName": "",
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": template},
        },
        "status": {
            "replicas": 0 if stopped else 1,
            "readyReplicas": 0 if stopped else 1,
            "currentReplicas": 0 if stopped else 1,
            "updatedReplicas": 0 if stopped else 1,
            "availableReplicas": 0 if stopped else 1,
            "observedGeneration": 1,
            "currentRevision": f"{name}-{_digest(name)}",
            "updateRevision": f"{name}-{_digest(name)}",
            "collisionCount": 0,
        },
    }


def notebook_pod(sts: JSON, *, node_name: str | None, started: datetime = EPOCH) -> JSON:
    """The StatefulSet's pod ``NAME-0``, after Istio's injection."""
    meta = sts["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    template = sts["spec"]["template"]
    pod = workload_pod(namespace, f"{name}-0", node_name=node_name, started=started)
    spec = dict(template["spec"])
    spec["containers"] = [*spec["containers"], _istio_proxy(namespace, f"{name}-0")]
    spec["initContainers"] = [_istio_init()]
    spec["volumes"] = [*spec.get("volumes", []), *_volumes(None)[:6]]
    spec.update(hostname=f"{name}-0", restartPolicy="Always", serviceAccount=spec.get("serviceAccountName"))
    if node_name:
        spec["nodeName"] = node_name
    pod["spec"] = spec
    pod["metadata"]["labels"] = {
        **template["metadata"]["labels"],
        "apps.kubernetes.io/pod-index": "0",
        "controller-revision-hash": sts["status"]["currentRevision"],
        "statefulset.kubernetes.io/pod-name": f"{name}-0",
        "security.istio.io/tlsMode": "istio",
    }
    pod["metadata"]["ownerReferences"] = [_owner("apps/v1", "StatefulSet", name, meta["uid"])]
    pod["status"] = _status(spec["containers"], "Running", node_name, started)
    return pod


# -- whole clusters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    name: str
    instance_type: str = "g4dn.xlarge"
    nodes: int = 1
    min_size: int = 0
    max_size: int = 2
    gpus: int = 1

    def node_names(self) -> list[str]:
        d = int(_digest(self.name), 16)  # distinct per nodegroup: a name collision would merge nodes
        return [
            f"ip-{d % 256}-{(d >> 8) % 256}-{(d >> 16) % 256}-{i + 10}.ec2.internal"
            for i in range(self.nodes)
        ]


def create_eks_cluster(eks: Any, cluster: str = CLUSTER) -> None:
    eks.create_cluster(
        name=cluster,
        roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/eks",
        resourcesVpcConfig={"subnetIds": ["subnet-a", "subnet-b"]},
    )


def create_nodegroup(eks: Any, group: GroupSpec, cluster: str = CLUSTER) -> None:
    eks.create_nodegroup(
        clusterName=cluster,
        nodegroupName=group.name,
        nodeRole=f"arn:aws:iam::{ACCOUNT_ID}:role/node",
        subnets=["subnet-a"],
        instanceTypes=[group.instance_type],
        amiType="AL2023_x86_64_NVIDIA",
        scalingConfig={"minSize": group.min_size, "maxSize": group.max_size, "desiredSize": group.nodes},
        taints=[{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}],
    )


def ensure_namespace(api: FakeApiServer, namespace: str) -> None:
    if api.get("v1", "namespaces", namespace) is None:
        api.seed(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace},
                "status": {"phase": "Active"},
            }
        )


def add_notebook(
    api: FakeApiServer,
    namespace: str,
    name: str,
    *,
    node_name: str | None,
    gpus: int = 1,
    stopped_at: datetime | None = None,
    server_type: str = "jupyter",
) -> JSON:
    """A Notebook (validated against the real CRD), its StatefulSet and, unless stopped, its pod."""
    ensure_namespace(api, namespace)
    created = api.create(notebook(namespace, name, gpus=gpus, stopped_at=stopped_at, server_type=server_type))
    sts = api.seed(notebook_statefulset(created))
    if stopped_at is None:
        api.seed(notebook_pod(sts, node_name=node_name))
    return created


def filler_pods(count: int, namespaces: int = 50) -> Iterator[JSON]:
    """CPU pods of several workloads: what fills a cluster and must be read past."""
    owners = (("apps/v1", "ReplicaSet"), ("batch/v1", "Job"), ("argoproj.io/v1alpha1", "Workflow"))
    for i in range(count):
        namespace = f"team-{i % namespaces:02d}"
        api_version, kind = owners[i % len(owners)]
        yield workload_pod(
            namespace,
            f"worker-{i:06d}",
            node_name=f"ip-10-1-{i % 200}-{i % 50}.ec2.internal",
            owner=(api_version, kind, f"run-{i // 10:05d}"),
            image="python:3.12-slim",
        )


def seed_pods(api: FakeApiServer, pods: Iterator[JSON]) -> int:
    n = 0
    for pod in pods:
        ensure_namespace(api, pod["metadata"]["namespace"])
        api.seed(pod)
        n += 1
    return n


def training_pod(namespace: str, name: str, node_name: str | None, kind: str, gpus: int = 1) -> JSON:
    owner = {
        "job": ("batch/v1", "Job"),
        "pytorchjob": ("kubeflow.org/v1", "PyTorchJob"),
        "pipeline": ("argoproj.io/v1alpha1", "Workflow"),
        "other": ("apps/v1", "ReplicaSet"),
    }[kind]
    return workload_pod(namespace, name, node_name=node_name, gpus=gpus, owner=(*owner, f"{name}-owner"))


def seed_nodes(api: FakeApiServer, group: GroupSpec, created: datetime = EPOCH) -> list[str]:
    names = group.node_names()
    for name in names:
        api.seed(node(name, group.name, group.instance_type, group.gpus, created - timedelta(hours=1)))
    return names
