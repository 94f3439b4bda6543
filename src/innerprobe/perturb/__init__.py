"""innerprobe.perturb"""
