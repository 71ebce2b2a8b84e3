"""The stage pipeline: `kollm run` (data -> train -> eval -> register), tune, the feedback loop
and the demo."""
