"""The method, torch-free (numpy only; the deployment runtime imports it): CIFAR-100 classes, splits, expert subsets
and confusion-aware partitions, the router and the routing of a batch, policies, the threshold sweep, the cost model,
statistics and findings, learned deferral, break-even maps and the experts' stage schedules."""
