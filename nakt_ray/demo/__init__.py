"""The embedded default: a synthetic ultrasound-like data generator with four sites, and ``nakt demo``, which
trains small teachers on them and runs the whole pipeline. Outside the core library: nothing in it is imported by
the stages."""
