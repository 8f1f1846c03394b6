"""The pure core of kf-chatops: request kinds, the request state machine, policy and plans.

Nothing here performs I/O or imports Slack, Kubernetes, AWS or SQL libraries (an import-linter
contract checks it). The edges (``bot/``) and the adapters (``provisioning/``) depend on this
package, never the other way round; they reach it through the ports in ``handlers.ports``.
"""
