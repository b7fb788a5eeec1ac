"""The Kubernetes cluster backend: topology discovery and safe actuation through the API.

Modules, in the order one run uses them:

* `client`     — connect (explicit API URL, kubeconfig/context, or in-cluster) and classify API
                 errors into transient (retried by Prefect) and permanent (actionable message);
* `discovery`  — read nodes, pods, managed Deployments and scale_ref objects (paginated) into
                 the same `ClusterView` the twin produces, plus what actuation needs to know
                 about each managed cell;
* `scaleref`   — `scale_ref` targets (objects the operator owns): read them and their /scale,
                 their pods' cells and drain state, the plan mapped onto them, /scale writes;
* `render`     — pure: the Deployment of one placement cell (labels, affinity, GPU requests);
* `rbac`       — pure: the least-privilege RBAC manifests a config needs (`heteroscale rbac`);
* `backend`    — `KubeBackend`, the `ClusterBackend` the flow holds: discovers once per apply,
                 asks the pure `tasks.core.actuation.decide_actions` what to do (scale-out, soft
                 scale-in, drain finalisation, restore, which pods; from the SLO state the run
                 read), and executes it in apply / dry-run / advisory mode.
"""
