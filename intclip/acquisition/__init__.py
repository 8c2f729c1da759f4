"""Getting the images onto disk: downloading them and storing small copies."""
