"""Records, readers, splits, the task data and the bundled generators."""
