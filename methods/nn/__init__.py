"""Network parts shared by methods: backbones, heads, the autoencoders."""
