"""The cluster: the GPU memory planner, the node inventory, the job spec and its executors (this
machine, Ray), and deployment on Ray Serve."""
