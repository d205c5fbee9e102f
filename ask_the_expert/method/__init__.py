"""The method, torch-free (numpy only; the deployment runtime imports it): CIFAR-100 classes, splits, expert subsets
and confusion-aware partitions, the router, its confidence measures and the routing of a batch, the policies, the
threshold sweep, the cost model, statistics and findings, diagnostics, learned deferral, break-even maps, the experts'
stage schedules and variants (docs/design.md)."""
