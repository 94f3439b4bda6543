"""innerprobe.patch"""
