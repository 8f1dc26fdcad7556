"""Node monitor: reads the containers' shared regions written by libvgpu."""
