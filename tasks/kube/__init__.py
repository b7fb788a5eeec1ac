"""The Kubernetes cluster backend: topology discovery and safe actuation through the API.

Modules, in the order one run uses them:

* `client`     — connect (explicit API URL, kubeconfig/context, or in-cluster) and classify API
                 errors into transient (retried by Prefect) and permanent (actionable message);
* `discovery`  — read nodes, pods and managed Deployments (paginated) into the same `ClusterView`
                 the twin produces, plus what actuation needs to know about each managed cell;
* `render`     — pure: the Deployment of one placement cell (labels, affinity, GPU requests);
* `backend`    — `KubeBackend`, the `ClusterBackend` the flow holds: discovers once per apply,
                 asks the pure `tasks.core.actuation.decide_actions` what to do (scale-out, soft
                 scale-in, drain finalisation, restore, which pods; from the SLO state the run
                 read), and executes it in apply / dry-run / advisory mode.
"""
