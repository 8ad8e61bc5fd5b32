"""What is served, watched: the bundle's reference, health windows, the golden self-test and
shadow runs of a candidate model (SPEC §9)."""
