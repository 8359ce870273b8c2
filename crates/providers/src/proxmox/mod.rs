//! Proxmox VE (capmox): VM templates from qcow2 images through the Proxmox REST API (in progress).
