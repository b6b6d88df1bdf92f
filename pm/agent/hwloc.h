/*
 * The part of the hwloc 2.x C API that pm.agent.topology calls, for cffi in
 * ABI mode (ffi.cdef + ffi.dlopen): no compiler runs, so this file is the
 * whole contract with libhwloc.so.15.  Only functions the library exports are
 * declared; the static inline helpers of <hwloc/helper.h> and
 * <hwloc/inlines.h> do not exist in the shared object.
 *
 * Facts below are from the hwloc 2.x headers (<hwloc.h>, <hwloc/bitmap.h>,
 * <hwloc/export.h>, <hwloc/autogen/config.h>).  The loader checks
 * hwloc_get_api_version() >= 0x20000 before reading any structure.
 */

typedef uint64_t hwloc_uint64_t;

typedef enum {
  HWLOC_OBJ_MACHINE,
  HWLOC_OBJ_PACKAGE,
  HWLOC_OBJ_CORE,
  HWLOC_OBJ_PU,
  HWLOC_OBJ_L1CACHE,
  HWLOC_OBJ_L2CACHE,
  HWLOC_OBJ_L3CACHE,
  HWLOC_OBJ_L4CACHE,
  HWLOC_OBJ_L5CACHE,
  HWLOC_OBJ_L1ICACHE,
  HWLOC_OBJ_L2ICACHE,
  HWLOC_OBJ_L3ICACHE,
  HWLOC_OBJ_GROUP,
  HWLOC_OBJ_NUMANODE,
  HWLOC_OBJ_BRIDGE,
  HWLOC_OBJ_PCI_DEVICE,
  HWLOC_OBJ_OS_DEVICE,
  HWLOC_OBJ_MISC,
  HWLOC_OBJ_MEMCACHE,
  HWLOC_OBJ_DIE,
  HWLOC_OBJ_TYPE_MAX
} hwloc_obj_type_t;

enum hwloc_get_type_depth_e {
  HWLOC_TYPE_DEPTH_UNKNOWN = -1,
  HWLOC_TYPE_DEPTH_MULTIPLE = -2,
  HWLOC_TYPE_DEPTH_NUMANODE = -3,
  HWLOC_TYPE_DEPTH_BRIDGE = -4,
  HWLOC_TYPE_DEPTH_PCI_DEVICE = -5,
  HWLOC_TYPE_DEPTH_OS_DEVICE = -6,
  HWLOC_TYPE_DEPTH_MISC = -7,
  HWLOC_TYPE_DEPTH_MEMCACHE = -8
};

enum hwloc_type_filter_e {
  HWLOC_TYPE_FILTER_KEEP_ALL = 0,
  HWLOC_TYPE_FILTER_KEEP_NONE = 1,
  HWLOC_TYPE_FILTER_KEEP_STRUCTURE = 2,
  HWLOC_TYPE_FILTER_KEEP_IMPORTANT = 3
};

typedef struct hwloc_topology * hwloc_topology_t;
typedef struct hwloc_bitmap_s * hwloc_bitmap_t;
typedef const struct hwloc_bitmap_s * hwloc_const_bitmap_t;
typedef hwloc_bitmap_t hwloc_cpuset_t;
typedef hwloc_const_bitmap_t hwloc_const_cpuset_t;
typedef hwloc_bitmap_t hwloc_nodeset_t;

union hwloc_obj_attr_u;
struct hwloc_info_s;

/*
 * PREFIX of struct hwloc_obj as laid out in hwloc 2.x, field for field, up to
 * the last field we read (cpuset) plus the two sets that follow it.  Safe
 * because hwloc allocates every object and we only read through pointers it
 * returns: we never allocate, copy, take sizeof, or index an array of this
 * struct, so the undeclared tail (infos, userdata, gp_index) never matters.
 * The order and types of these fields have been stable since 2.0.
 */
struct hwloc_obj {
  hwloc_obj_type_t type;
  char *subtype;
  unsigned os_index;
  char *name;
  hwloc_uint64_t total_memory;
  union hwloc_obj_attr_u *attr;
  int depth;
  unsigned logical_index;
  struct hwloc_obj *next_cousin;
  struct hwloc_obj *prev_cousin;
  struct hwloc_obj *parent;
  unsigned sibling_rank;
  struct hwloc_obj *next_sibling;
  struct hwloc_obj *prev_sibling;
  unsigned arity;
  struct hwloc_obj **children;
  struct hwloc_obj *first_child;
  struct hwloc_obj *last_child;
  int symmetric_subtree;
  unsigned memory_arity;
  struct hwloc_obj *memory_first_child;
  unsigned io_arity;
  struct hwloc_obj *io_first_child;
  unsigned misc_arity;
  struct hwloc_obj *misc_first_child;
  hwloc_cpuset_t cpuset;
  hwloc_cpuset_t complete_cpuset;
  hwloc_nodeset_t nodeset;
  hwloc_nodeset_t complete_nodeset;
};
typedef struct hwloc_obj * hwloc_obj_t;

/* <hwloc.h> */
unsigned hwloc_get_api_version(void);
int hwloc_topology_init(hwloc_topology_t *topologyp);
int hwloc_topology_set_io_types_filter(hwloc_topology_t topology, enum hwloc_type_filter_e filter);
int hwloc_topology_set_xmlbuffer(hwloc_topology_t topology, const char *buffer, int size);
int hwloc_topology_load(hwloc_topology_t topology);
void hwloc_topology_destroy(hwloc_topology_t topology);
int hwloc_get_type_depth(hwloc_topology_t topology, hwloc_obj_type_t type);
unsigned hwloc_get_nbobjs_by_depth(hwloc_topology_t topology, int depth);
hwloc_obj_t hwloc_get_obj_by_depth(hwloc_topology_t topology, int depth, unsigned idx);

/* <hwloc/helper.h>: exported (not inline) */
hwloc_const_cpuset_t hwloc_topology_get_allowed_cpuset(hwloc_topology_t topology);

/* <hwloc/bitmap.h> */
int hwloc_bitmap_first(hwloc_const_bitmap_t bitmap);
int hwloc_bitmap_next(hwloc_const_bitmap_t bitmap, int prev);
int hwloc_bitmap_weight(hwloc_const_bitmap_t bitmap);

/* <hwloc/export.h> */
int hwloc_topology_export_xmlbuffer(hwloc_topology_t topology, char **xmlbuffer, int *buflen,
                                    unsigned long flags);
void hwloc_free_xmlbuffer(hwloc_topology_t topology, char *xmlbuffer);
