"""The analyst side: read-only SQL over the published tables (`sql`) and the HTML report (`report`)."""
