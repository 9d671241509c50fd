"""Process supervision: start the planes in order, wait for their health, stop them cleanly;
`ragmesh up` on top of it."""
