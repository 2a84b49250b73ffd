"""What check.py and domain_ops.py share: the embedded driver's qemu.conf
and the small domain both drive (two qcow2 disks on virtio-blk: vda, which
the operations work on, and vdb, which rides along).
"""

QEMU_CONF = """user = "root"
group = "root"
cgroup_controllers = []
security_driver = "none"
namespaces = []
stdio_handler = "file"
"""

DOMAIN_XML = """<domain type='qemu'>
  <name>ops</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <features><acpi/></features>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>{emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{dir}/disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{dir}/data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""
