"""The files `studio plugin new NAME` writes (studio.cli.plugin_new fills in their {{...}} placeholders)."""
