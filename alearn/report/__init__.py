"""What people read: the HTML report and its plots, the status summary, agreement tables."""
