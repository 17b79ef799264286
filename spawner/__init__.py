"""deskhub's spawner: places each session on a node and starts its desktop container."""
