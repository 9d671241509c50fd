"""The mesh's config, parsed once, below everything that uses it: the schema of config/mesh.yaml
(one section per plane), its loading with environment overrides, and the regions."""
