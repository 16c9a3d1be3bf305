"""rclpy nodes: thin wrappers that convert messages and call the Localizer."""
