"""lmms-eval task configs over this project's benchmark files (used with `eval.lmms_eval_adapter`)."""
