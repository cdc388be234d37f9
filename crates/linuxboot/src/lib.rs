//! The Linux x86 boot protocol: zero page, e820 map, MP table.
