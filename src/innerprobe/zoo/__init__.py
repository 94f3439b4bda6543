"""innerprobe.zoo"""
