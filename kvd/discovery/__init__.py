"""
Routing and observability: how clients and operators find the cluster and
see into it, each reading the node through its NodeView.

- ``dns``: the DNS authority and server (twisted.names): ``leader.kvd``, SRV of the voters;
- ``http``: the HTTP port (twisted.web): status API, health, metrics, the cluster page (``static/``);
- ``cluster_view``: the cluster as one node sees it, gathered from every member's INFO;
- ``metrics``: Prometheus metrics (prometheus_client);
- ``services``: how kvd.tap adds the DNS and HTTP listeners to a node.
"""
