"""Using a trained model: the artifact and its loader, evaluation, prediction, export."""
