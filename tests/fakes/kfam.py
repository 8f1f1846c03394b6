"""The email -> KFAM RoleBinding name vectors every suite that names a contributor's binding checks."""

from __future__ import annotations

KFAM_VECTORS = [
    # kubeflow/dashboard components/access-management/kfam/bindings_test.go (role edit)
    ("lalith.vaka@zq.msds.kp.org", "user-lalith-vaka-zq-msds-kp-org-clusterrole-edit"),
    ("397401@zq.msds.kp.org", "user-397401-zq-msds-kp-org-clusterrole-edit"),
    ("lalith.397401@zq.msds.kp.org", "user-lalith-397401-zq-msds-kp-org-clusterrole-edit"),
    ("397401.vaka@zq.msds.kp.org", "user-397401-vaka-zq-msds-kp-org-clusterrole-edit"),
    ("i397401@zq.msds.kp.org", "user-i397401-zq-msds-kp-org-clusterrole-edit"),
    # the issue's, checked against the rule in kubeflow-reference.md §2.2
    ("Alice.Smith+ml@Example.COM", "user-alice-smith-ml-example-com-clusterrole-edit"),
]
