	.amdgcn_target "amdgcn-amd-amdhsa-hcc-gfx942"
	.amdhsa_code_object_version 6
	.text
	.globl	fused_linear1_cast1_add_kernel
	.p2align	8
	.type	fused_linear1_cast1_add_kernel,@function
fused_linear1_cast1_add_kernel:
	s_load_dwordx4 s[4:7], s[0:1], 0x8
	v_bfe_u32 v1, v0, 10, 10
	v_lshlrev_b32_e32 v2, 7, v1
	v_lshl_add_u32 v2, s2, 9, v2
	v_and_b32_e32 v6, 0x3ff, v0
	v_lshl_add_u32 v2, v6, 1, v2
	v_ashrrev_i32_e32 v3, 31, v2
	v_lshlrev_b32_e32 v0, 2, v6
	s_waitcnt lgkmcnt(0)
	v_lshl_add_u64 v[2:3], v[2:3], 1, s[6:7]
	global_load_dword v0, v0, s[4:5]
	v_mbcnt_lo_u32_b32 v7, -1, 0
	global_load_dword v5, v[2:3], off
	s_waitcnt vmcnt(1)
	v_cvt_f32_f16_e32 v2, v0
	v_cvt_f32_f16_sdwa v3, v0 dst_sel:DWORD dst_unused:UNUSED_PAD src0_sel:WORD_1
	s_waitcnt vmcnt(0)
	v_cvt_f32_f16_e32 v4, v5
	v_cvt_f32_f16_sdwa v5, v5 dst_sel:DWORD dst_unused:UNUSED_PAD src0_sel:WORD_1
	v_mbcnt_hi_u32_b32 v0, -1, v7
	v_lshlrev_b32_e32 v7, 2, v0
	v_or_b32_e32 v8, 0x80, v7
	v_pk_fma_f32 v[2:3], v[2:3], v[4:5], 0 op_sel_hi:[1,1,0]
	v_and_b32_e32 v4, 63, v0
	v_add_f32_e32 v2, 0, v2
	v_add_f32_e32 v2, v3, v2
	ds_bpermute_b32 v3, v8, v2
	v_add_u32_e32 v5, 64, v7
	v_cmp_lt_u32_e32 vcc, 47, v4
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	v_cndmask_b32_e32 v5, v5, v7, vcc
	ds_bpermute_b32 v3, v5, v2
	v_add_u32_e32 v5, 32, v7
	v_cmp_lt_u32_e32 vcc, 55, v4
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	v_cndmask_b32_e32 v5, v5, v7, vcc
	ds_bpermute_b32 v3, v5, v2
	v_add_u32_e32 v5, 16, v7
	v_cmp_lt_u32_e32 vcc, 59, v4
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	v_cndmask_b32_e32 v5, v5, v7, vcc
	ds_bpermute_b32 v3, v5, v2
	v_add_u32_e32 v5, 8, v7
	v_cmp_lt_u32_e32 vcc, 61, v4
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	v_cndmask_b32_e32 v5, v5, v7, vcc
	ds_bpermute_b32 v3, v5, v2
	v_cmp_ne_u32_e32 vcc, 63, v4
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	v_addc_co_u32_e32 v0, vcc, 0, v0, vcc
	v_lshlrev_b32_e32 v0, 2, v0
	ds_bpermute_b32 v0, v0, v2
	v_and_b32_e32 v3, 0x100, v7
	v_cmp_eq_u32_e32 vcc, 0, v6
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v0, v2, v0
	v_lshl_add_u32 v2, v1, 8, v3
	ds_bpermute_b32 v0, v2, v0
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB0_2
	s_load_dwordx2 s[4:5], s[0:1], 0x18
	v_lshl_add_u32 v2, s2, 2, v1
	v_ashrrev_i32_e32 v3, 31, v2
	v_lshlrev_b64 v[2:3], 1, v[2:3]
	s_load_dwordx2 s[0:1], s[0:1], 0x0
	s_waitcnt lgkmcnt(0)
	v_lshl_add_u64 v[4:5], s[4:5], 0, v[2:3]
	global_load_ushort v4, v[4:5], off
	v_cvt_f16_f32_e32 v5, v0
	v_lshl_add_u64 v[0:1], s[0:1], 0, v[2:3]
	s_waitcnt vmcnt(0)
	v_add_f16_e32 v2, v4, v5
	global_store_short v[0:1], v2, off
.LBB0_2:
	s_endpgm
	.section	.rodata,"a",@progbits
	.p2align	6, 0x0
	.amdhsa_kernel fused_linear1_cast1_add_kernel
		.amdhsa_group_segment_fixed_size 0
		.amdhsa_private_segment_fixed_size 0
		.amdhsa_kernarg_size 32
		.amdhsa_user_sgpr_count 2
		.amdhsa_user_sgpr_dispatch_ptr 0
		.amdhsa_user_sgpr_queue_ptr 0
		.amdhsa_user_sgpr_kernarg_segment_ptr 1
		.amdhsa_user_sgpr_dispatch_id 0
		.amdhsa_user_sgpr_kernarg_preload_length 0
		.amdhsa_user_sgpr_kernarg_preload_offset 0
		.amdhsa_user_sgpr_private_segment_size 0
		.amdhsa_uses_dynamic_stack 0
		.amdhsa_enable_private_segment 0
		.amdhsa_system_sgpr_workgroup_id_x 1
		.amdhsa_system_sgpr_workgroup_id_y 0
		.amdhsa_system_sgpr_workgroup_id_z 0
		.amdhsa_system_sgpr_workgroup_info 0
		.amdhsa_system_vgpr_workitem_id 1
		.amdhsa_next_free_vgpr 9
		.amdhsa_next_free_sgpr 8
		.amdhsa_accum_offset 12
		.amdhsa_reserve_vcc 1
		.amdhsa_float_round_mode_32 0
		.amdhsa_float_round_mode_16_64 0
		.amdhsa_float_denorm_mode_32 3
		.amdhsa_float_denorm_mode_16_64 3
		.amdhsa_dx10_clamp 1
		.amdhsa_ieee_mode 1
		.amdhsa_fp16_overflow 0
		.amdhsa_tg_split 0
		.amdhsa_exception_fp_ieee_invalid_op 0
		.amdhsa_exception_fp_denorm_src 0
		.amdhsa_exception_fp_ieee_div_zero 0
		.amdhsa_exception_fp_ieee_overflow 0
		.amdhsa_exception_fp_ieee_underflow 0
		.amdhsa_exception_fp_ieee_inexact 0
		.amdhsa_exception_int_div_zero 0
	.end_amdhsa_kernel
	.text
.Lfunc_end0:
	.size	fused_linear1_cast1_add_kernel, .Lfunc_end0-fused_linear1_cast1_add_kernel
	.set fused_linear1_cast1_add_kernel.num_vgpr, 9
	.set fused_linear1_cast1_add_kernel.num_agpr, 0
	.set fused_linear1_cast1_add_kernel.numbered_sgpr, 8
	.set fused_linear1_cast1_add_kernel.num_named_barrier, 0
	.set fused_linear1_cast1_add_kernel.private_seg_size, 0
	.set fused_linear1_cast1_add_kernel.uses_vcc, 1
	.set fused_linear1_cast1_add_kernel.uses_flat_scratch, 0
	.set fused_linear1_cast1_add_kernel.has_dyn_sized_stack, 0
	.set fused_linear1_cast1_add_kernel.has_recursion, 0
	.set fused_linear1_cast1_add_kernel.has_indirect_call, 0
	.globl	fused_linear_cast_silu_kernel
	.p2align	8
	.type	fused_linear_cast_silu_kernel,@function
fused_linear_cast_silu_kernel:
	v_cmp_gt_u32_e32 vcc, 64, v0
	v_mov_b32_e32 v2, 0
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB1_2
	s_load_dwordx4 s[8:11], s[0:1], 0x8
	v_lshl_or_b32 v2, s2, 6, v0
	v_ashrrev_i32_e32 v3, 31, v2
	v_lshlrev_b32_e32 v1, 1, v0
	s_waitcnt lgkmcnt(0)
	v_lshl_add_u64 v[2:3], v[2:3], 1, s[10:11]
	global_load_ushort v4, v[2:3], off
	global_load_ushort v5, v1, s[8:9]
	s_waitcnt vmcnt(0)
	v_fma_mix_f32 v1, v5, v4, 0 op_sel_hi:[1,1,0]
	s_nop 0
	v_add_f32_e32 v2, 0, v1
.LBB1_2:
	s_or_b64 exec, exec, s[4:5]
	v_lshlrev_b32_e32 v1, 2, v0
	s_barrier
	ds_write_b32 v1, v2
	s_barrier
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB1_4
	ds_read_b32 v2, v1 offset:256
	ds_read_b32 v3, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	ds_write_b32 v1, v2
.LBB1_4:
	s_or_b64 exec, exec, s[4:5]
	v_cmp_gt_u32_e32 vcc, 32, v0
	s_barrier
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB1_6
	ds_read_b32 v2, v1 offset:128
	ds_read_b32 v3, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	ds_write_b32 v1, v2
	ds_read_b32 v2, v1 offset:64
	ds_read_b32 v3, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	ds_write_b32 v1, v2
	ds_read_b32 v2, v1 offset:32
	ds_read_b32 v3, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	ds_write_b32 v1, v2
	ds_read_b32 v2, v1 offset:16
	ds_read_b32 v3, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	ds_write_b32 v1, v2
	ds_read_b32 v2, v1 offset:8
	ds_read_b32 v3, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	ds_write_b32 v1, v2
	ds_read_b32 v2, v1 offset:4
	ds_read_b32 v3, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v2, v3
	ds_write_b32 v1, v2
.LBB1_6:
	s_or_b64 exec, exec, s[4:5]
	v_cmp_eq_u32_e32 vcc, 0, v0
	s_barrier
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB1_8
	v_mov_b32_e32 v0, 0
	ds_read_b32 v1, v0
	ds_read_b32 v2, v0
	s_load_dwordx2 s[0:1], s[0:1], 0x0
	s_ashr_i32 s3, s2, 31
	s_lshl_b64 s[2:3], s[2:3], 1
	s_waitcnt lgkmcnt(0)
	v_cvt_f16_f32_e32 v1, v1
	v_cvt_f16_f32_e32 v2, v2
	s_add_u32 s0, s0, s2
	s_addc_u32 s1, s1, s3
	v_cvt_f32_f16_e64 v1, -v1
	v_mul_f32_e32 v1, 0x3fb8aa3b, v1
	v_exp_f32_e32 v1, v1
	s_nop 0
	v_cvt_f16_f32_e32 v1, v1
	v_add_f16_e32 v1, 1.0, v1
	v_rcp_f16_e32 v1, v1
	s_nop 0
	v_mul_f16_e32 v1, v1, v2
	global_store_short v0, v1, s[0:1]
.LBB1_8:
	s_endpgm
	.section	.rodata,"a",@progbits
	.p2align	6, 0x0
	.amdhsa_kernel fused_linear_cast_silu_kernel
		.amdhsa_group_segment_fixed_size 512
		.amdhsa_private_segment_fixed_size 0
		.amdhsa_kernarg_size 24
		.amdhsa_user_sgpr_count 2
		.amdhsa_user_sgpr_dispatch_ptr 0
		.amdhsa_user_sgpr_queue_ptr 0
		.amdhsa_user_sgpr_kernarg_segment_ptr 1
		.amdhsa_user_sgpr_dispatch_id 0
		.amdhsa_user_sgpr_kernarg_preload_length 0
		.amdhsa_user_sgpr_kernarg_preload_offset 0
		.amdhsa_user_sgpr_private_segment_size 0
		.amdhsa_uses_dynamic_stack 0
		.amdhsa_enable_private_segment 0
		.amdhsa_system_sgpr_workgroup_id_x 1
		.amdhsa_system_sgpr_workgroup_id_y 0
		.amdhsa_system_sgpr_workgroup_id_z 0
		.amdhsa_system_sgpr_workgroup_info 0
		.amdhsa_system_vgpr_workitem_id 0
		.amdhsa_next_free_vgpr 6
		.amdhsa_next_free_sgpr 12
		.amdhsa_accum_offset 8
		.amdhsa_reserve_vcc 1
		.amdhsa_float_round_mode_32 0
		.amdhsa_float_round_mode_16_64 0
		.amdhsa_float_denorm_mode_32 3
		.amdhsa_float_denorm_mode_16_64 3
		.amdhsa_dx10_clamp 1
		.amdhsa_ieee_mode 1
		.amdhsa_fp16_overflow 0
		.amdhsa_tg_split 0
		.amdhsa_exception_fp_ieee_invalid_op 0
		.amdhsa_exception_fp_denorm_src 0
		.amdhsa_exception_fp_ieee_div_zero 0
		.amdhsa_exception_fp_ieee_overflow 0
		.amdhsa_exception_fp_ieee_underflow 0
		.amdhsa_exception_fp_ieee_inexact 0
		.amdhsa_exception_int_div_zero 0
	.end_amdhsa_kernel
	.text
.Lfunc_end1:
	.size	fused_linear_cast_silu_kernel, .Lfunc_end1-fused_linear_cast_silu_kernel
	.set fused_linear_cast_silu_kernel.num_vgpr, 6
	.set fused_linear_cast_silu_kernel.num_agpr, 0
	.set fused_linear_cast_silu_kernel.numbered_sgpr, 12
	.set fused_linear_cast_silu_kernel.num_named_barrier, 0
	.set fused_linear_cast_silu_kernel.private_seg_size, 0
	.set fused_linear_cast_silu_kernel.uses_vcc, 1
	.set fused_linear_cast_silu_kernel.uses_flat_scratch, 0
	.set fused_linear_cast_silu_kernel.has_dyn_sized_stack, 0
	.set fused_linear_cast_silu_kernel.has_recursion, 0
	.set fused_linear_cast_silu_kernel.has_indirect_call, 0
	.globl	rms_norm_kernel
	.p2align	8
	.type	rms_norm_kernel,@function
rms_norm_kernel:
	s_load_dwordx2 s[2:3], s[0:1], 0x10
	v_lshlrev_b32_e32 v1, 1, v0
	v_mbcnt_lo_u32_b32 v2, -1, 0
	v_mbcnt_hi_u32_b32 v2, -1, v2
	v_lshlrev_b32_e32 v3, 2, v2
	s_waitcnt lgkmcnt(0)
	global_load_ushort v1, v1, s[2:3]
	v_or_b32_e32 v4, 0x80, v3
	v_and_b32_e32 v6, 63, v2
	v_add_u32_e32 v7, 64, v3
	v_cmp_lt_u32_e32 vcc, 47, v6
	s_load_dwordx4 s[0:3], s[0:1], 0x0
	s_waitcnt vmcnt(0)
	v_fma_mix_f32 v5, v1, v1, 0 op_sel_hi:[1,1,0]
	ds_bpermute_b32 v4, v4, v5
	v_cndmask_b32_e32 v7, v7, v3, vcc
	v_cmp_lt_u32_e32 vcc, 55, v6
	v_cvt_f32_f16_e32 v1, v1
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v4, v5, v4
	ds_bpermute_b32 v5, v7, v4
	v_add_u32_e32 v7, 32, v3
	v_cndmask_b32_e32 v7, v7, v3, vcc
	v_cmp_lt_u32_e32 vcc, 59, v6
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v4, v4, v5
	ds_bpermute_b32 v5, v7, v4
	v_add_u32_e32 v7, 16, v3
	v_cndmask_b32_e32 v7, v7, v3, vcc
	v_cmp_lt_u32_e32 vcc, 61, v6
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v4, v4, v5
	ds_bpermute_b32 v5, v7, v4
	v_add_u32_e32 v7, 8, v3
	v_cndmask_b32_e32 v7, v7, v3, vcc
	v_cmp_ne_u32_e32 vcc, 63, v6
	v_and_b32_e32 v3, 0x100, v3
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v4, v4, v5
	ds_bpermute_b32 v5, v7, v4
	v_addc_co_u32_e32 v2, vcc, 0, v2, vcc
	v_lshlrev_b32_e32 v2, 2, v2
	v_cmp_eq_u32_e32 vcc, 0, v0
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v4, v4, v5
	ds_bpermute_b32 v2, v2, v4
	s_waitcnt lgkmcnt(0)
	v_add_f32_e32 v2, v4, v2
	ds_bpermute_b32 v3, v3, v2
	v_mov_b32_e32 v2, 0
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB2_2
	s_waitcnt lgkmcnt(0)
	ds_write_b32 v2, v3
.LBB2_2:
	s_or_b64 exec, exec, s[4:5]
	v_lshlrev_b32_e32 v0, 1, v0
	s_barrier
	s_waitcnt lgkmcnt(0)
	global_load_ushort v3, v0, s[0:1]
	ds_read_b32 v2, v2
	v_mov_b32_e32 v4, 0x3727c5ac
	s_mov_b32 s0, 0xf800000
	s_waitcnt lgkmcnt(0)
	v_fmac_f32_e32 v4, 0x3c800000, v2
	v_mul_f32_e32 v2, 0x4f800000, v4
	v_cmp_gt_f32_e32 vcc, s0, v4
	s_nop 1
	v_cndmask_b32_e32 v2, v4, v2, vcc
	v_sqrt_f32_e32 v4, v2
	s_nop 0
	v_add_u32_e32 v5, -1, v4
	v_fma_f32 v6, -v5, v4, v2
	v_cmp_ge_f32_e64 s[0:1], 0, v6
	v_add_u32_e32 v6, 1, v4
	s_nop 0
	v_cndmask_b32_e64 v5, v4, v5, s[0:1]
	v_fma_f32 v4, -v6, v4, v2
	v_cmp_lt_f32_e64 s[0:1], 0, v4
	s_nop 1
	v_cndmask_b32_e64 v4, v5, v6, s[0:1]
	v_mul_f32_e32 v5, 0x37800000, v4
	v_cndmask_b32_e32 v4, v4, v5, vcc
	v_mov_b32_e32 v5, 0x260
	v_cmp_class_f32_e32 vcc, v2, v5
	s_nop 1
	v_cndmask_b32_e32 v2, v4, v2, vcc
	v_div_scale_f32 v4, s[0:1], v2, v2, 1.0
	v_rcp_f32_e32 v5, v4
	s_nop 0
	v_fma_f32 v6, -v4, v5, 1.0
	v_fmac_f32_e32 v5, v6, v5
	v_div_scale_f32 v6, vcc, 1.0, v2, 1.0
	v_mul_f32_e32 v7, v6, v5
	v_fma_f32 v8, -v4, v7, v6
	v_fmac_f32_e32 v7, v8, v5
	v_fma_f32 v4, -v4, v7, v6
	v_div_fmas_f32 v4, v4, v5, v7
	v_div_fixup_f32 v2, v4, v2, 1.0
	v_fma_mixlo_f16 v1, v2, v1, 0
	s_waitcnt vmcnt(0)
	v_mul_f16_e32 v1, v3, v1
	global_store_short v0, v1, s[2:3]
	s_endpgm
	.section	.rodata,"a",@progbits
	.p2align	6, 0x0
	.amdhsa_kernel rms_norm_kernel
		.amdhsa_group_segment_fixed_size 4
		.amdhsa_private_segment_fixed_size 0
		.amdhsa_kernarg_size 24
		.amdhsa_user_sgpr_count 2
		.amdhsa_user_sgpr_dispatch_ptr 0
		.amdhsa_user_sgpr_queue_ptr 0
		.amdhsa_user_sgpr_kernarg_segment_ptr 1
		.amdhsa_user_sgpr_dispatch_id 0
		.amdhsa_user_sgpr_kernarg_preload_length 0
		.amdhsa_user_sgpr_kernarg_preload_offset 0
		.amdhsa_user_sgpr_private_segment_size 0
		.amdhsa_uses_dynamic_stack 0
		.amdhsa_enable_private_segment 0
		.amdhsa_system_sgpr_workgroup_id_x 1
		.amdhsa_system_sgpr_workgroup_id_y 0
		.amdhsa_system_sgpr_workgroup_id_z 0
		.amdhsa_system_sgpr_workgroup_info 0
		.amdhsa_system_vgpr_workitem_id 0
		.amdhsa_next_free_vgpr 9
		.amdhsa_next_free_sgpr 6
		.amdhsa_accum_offset 12
		.amdhsa_reserve_vcc 1
		.amdhsa_float_round_mode_32 0
		.amdhsa_float_round_mode_16_64 0
		.amdhsa_float_denorm_mode_32 3
		.amdhsa_float_denorm_mode_16_64 3
		.amdhsa_dx10_clamp 1
		.amdhsa_ieee_mode 1
		.amdhsa_fp16_overflow 0
		.amdhsa_tg_split 0
		.amdhsa_exception_fp_ieee_invalid_op 0
		.amdhsa_exception_fp_denorm_src 0
		.amdhsa_exception_fp_ieee_div_zero 0
		.amdhsa_exception_fp_ieee_overflow 0
		.amdhsa_exception_fp_ieee_underflow 0
		.amdhsa_exception_fp_ieee_inexact 0
		.amdhsa_exception_int_div_zero 0
	.end_amdhsa_kernel
	.text
.Lfunc_end2:
	.size	rms_norm_kernel, .Lfunc_end2-rms_norm_kernel
	.set rms_norm_kernel.num_vgpr, 9
	.set rms_norm_kernel.num_agpr, 0
	.set rms_norm_kernel.numbered_sgpr, 6
	.set rms_norm_kernel.num_named_barrier, 0
	.set rms_norm_kernel.private_seg_size, 0
	.set rms_norm_kernel.uses_vcc, 1
	.set rms_norm_kernel.uses_flat_scratch, 0
	.set rms_norm_kernel.has_dyn_sized_stack, 0
	.set rms_norm_kernel.has_recursion, 0
	.set rms_norm_kernel.has_indirect_call, 0
	.section	.text.tvm.fp16.conv,"ax",@progbits
	.weak	__truncsfhf2
	.p2align	2
	.type	__truncsfhf2,@function
__truncsfhf2:
	s_waitcnt vmcnt(0) expcnt(0) lgkmcnt(0)
	v_and_b32_e32 v2, 0x7fffffff, v0
	v_add_u32_e32 v1, 0xc7800000, v2
	v_add_u32_e32 v3, 0xb8800000, v2
	v_cmp_ge_u32_e32 vcc, v1, v3
	s_and_saveexec_b64 s[0:1], vcc
	s_xor_b64 s[0:1], exec, s[0:1]
	s_cbranch_execz .LBB3_14
	s_mov_b32 s2, 0x7f800001
	v_cmp_gt_u32_e32 vcc, s2, v2
	s_and_saveexec_b64 s[2:3], vcc
	s_xor_b64 s[2:3], exec, s[2:3]
	s_cbranch_execz .LBB3_11
	s_mov_b32 s4, 0x47800000
	v_cmp_gt_u32_e32 vcc, s4, v2
	v_mov_b32_e32 v1, 0x7c00
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB3_10
	s_mov_b32 s6, 0x2cffffff
	v_cmp_lt_u32_e32 vcc, s6, v2
	v_mov_b32_e32 v1, 0
	s_and_saveexec_b64 s[6:7], vcc
	s_cbranch_execz .LBB3_9
	v_lshrrev_b32_e32 v1, 23, v2
	v_and_b32_e32 v3, 0x7fffff, v0
	v_sub_u32_e32 v2, 0x71, v1
	v_or_b32_e32 v3, 0x800000, v3
	v_add_u32_e32 v1, 0xffffffaf, v1
	v_lshlrev_b32_e32 v1, v1, v3
	v_cmp_ne_u32_e32 vcc, 0, v1
	v_lshrrev_b32_e32 v3, v2, v3
	s_movk_i32 s8, 0x1fff
	v_cndmask_b32_e64 v1, 0, 1, vcc
	v_lshrrev_b32_e32 v2, 13, v3
	v_and_or_b32 v3, v3, s8, v1
	s_movk_i32 s8, 0x1001
	v_cmp_gt_u32_e32 vcc, s8, v3
	s_and_saveexec_b64 s[8:9], vcc
	s_xor_b64 s[8:9], exec, s[8:9]
	s_movk_i32 s10, 0x1000
	v_cmp_eq_u32_e32 vcc, s10, v3
	s_nop 1
	v_cndmask_b32_e64 v1, 0, 1, vcc
	v_and_b32_e32 v1, v1, v2
	v_add_u32_e32 v1, v1, v2
	s_andn2_saveexec_b64 s[8:9], s[8:9]
	v_add_u32_e32 v1, 1, v2
	s_or_b64 exec, exec, s[8:9]
.LBB3_9:
	s_or_b64 exec, exec, s[6:7]
.LBB3_10:
	s_or_b64 exec, exec, s[4:5]
.LBB3_11:
	s_andn2_saveexec_b64 s[2:3], s[2:3]
	v_bfe_u32 v1, v0, 13, 9
	v_or_b32_e32 v1, 0x7e00, v1
	s_or_b64 exec, exec, s[2:3]
.LBB3_14:
	s_andn2_saveexec_b64 s[0:1], s[0:1]
	s_cbranch_execz .LBB3_20
	v_and_b32_e32 v3, 0x1fff, v0
	s_movk_i32 s2, 0x1001
	v_lshrrev_b32_e32 v2, 13, v0
	v_cmp_gt_u32_e32 vcc, s2, v3
	s_and_saveexec_b64 s[2:3], vcc
	s_xor_b64 s[2:3], exec, s[2:3]
	s_movk_i32 s4, 0x1000
	v_cmp_eq_u32_e32 vcc, s4, v3
	s_mov_b32 s4, 0xfffe4000
	s_nop 0
	v_cndmask_b32_e64 v1, 0, 1, vcc
	v_and_b32_e32 v1, v1, v2
	v_add3_u32 v1, v2, v1, s4
	s_andn2_saveexec_b64 s[2:3], s[2:3]
	v_add_u32_e32 v1, 0xfffe4001, v2
	s_or_b64 exec, exec, s[2:3]
.LBB3_20:
	s_or_b64 exec, exec, s[0:1]
	v_lshrrev_b32_e32 v0, 16, v0
	s_mov_b32 s0, 0x8000
	v_and_or_b32 v0, v0, s0, v1
	s_setpc_b64 s[30:31]
.Lfunc_end3:
	.size	__truncsfhf2, .Lfunc_end3-__truncsfhf2
	.set __truncsfhf2.num_vgpr, 4
	.set __truncsfhf2.num_agpr, 0
	.set __truncsfhf2.numbered_sgpr, 32
	.set __truncsfhf2.num_named_barrier, 0
	.set __truncsfhf2.private_seg_size, 0
	.set __truncsfhf2.uses_vcc, 1
	.set __truncsfhf2.uses_flat_scratch, 0
	.set __truncsfhf2.has_dyn_sized_stack, 0
	.set __truncsfhf2.has_recursion, 0
	.set __truncsfhf2.has_indirect_call, 0
	.weak	__extendhfsf2
	.p2align	2
	.type	__extendhfsf2,@function
__extendhfsf2:
	s_waitcnt vmcnt(0) expcnt(0) lgkmcnt(0)
	v_and_b32_e32 v2, 0x7fff, v0
	v_and_b32_e32 v1, 0xffff, v2
	v_add_u16_e32 v2, 0xfc00, v2
	s_movk_i32 s0, 0x77ff
	v_cmp_lt_u16_e32 vcc, s0, v2
	s_and_saveexec_b64 s[0:1], vcc
	s_xor_b64 s[0:1], exec, s[0:1]
	s_cbranch_execz .LBB4_8
	s_movk_i32 s2, 0x7c00
	v_cmp_gt_u16_e32 vcc, s2, v1
	s_and_saveexec_b64 s[2:3], vcc
	s_xor_b64 s[2:3], exec, s[2:3]
	s_cbranch_execz .LBB4_5
	v_cmp_ne_u16_e32 vcc, 0, v1
	v_mov_b32_e32 v2, 0
	s_and_saveexec_b64 s[4:5], vcc
	s_cbranch_execz .LBB4_4
	s_movk_i32 s6, 0x100
	v_lshrrev_b32_e32 v2, 8, v1
	v_cmp_gt_u16_e32 vcc, s6, v1
	s_nop 1
	v_cndmask_b32_e32 v2, v2, v1, vcc
	v_cndmask_b32_e64 v3, 24, 32, vcc
	v_lshrrev_b32_e32 v4, 4, v2
	v_cmp_gt_u32_e32 vcc, 16, v2
	v_add_u32_e32 v5, -4, v3
	s_nop 0
	v_cndmask_b32_e32 v2, v4, v2, vcc
	v_cndmask_b32_e32 v3, v5, v3, vcc
	v_lshrrev_b32_e32 v4, 2, v2
	v_cmp_gt_u32_e32 vcc, 4, v2
	v_add_u32_e32 v5, -2, v3
	s_nop 0
	v_cndmask_b32_e32 v2, v4, v2, vcc
	v_cndmask_b32_e32 v3, v5, v3, vcc
	v_sub_u32_e32 v4, 0, v2
	v_cmp_gt_u32_e32 vcc, 2, v2
	s_nop 1
	v_cndmask_b32_e32 v2, -2, v4, vcc
	v_add_u32_e32 v2, v2, v3
	v_add_u32_e32 v3, -8, v2
	v_lshlrev_b32_e32 v1, v3, v1
	v_lshlrev_b32_e32 v2, 23, v2
	v_xor_b32_e32 v1, 0x800000, v1
	v_sub_u32_e32 v2, 0x43000000, v2
	v_or_b32_e32 v2, v1, v2
.LBB4_4:
	s_or_b64 exec, exec, s[4:5]
.LBB4_5:
	s_andn2_saveexec_b64 s[2:3], s[2:3]
	v_mov_b32_e32 v2, 0x7f800000
	v_lshl_or_b32 v2, v1, 13, v2
	s_or_b64 exec, exec, s[2:3]
.LBB4_8:
	s_andn2_saveexec_b64 s[0:1], s[0:1]
	v_bfrev_b32_e32 v2, 28
	v_lshl_add_u32 v2, v1, 13, v2
	s_or_b64 exec, exec, s[0:1]
	s_movk_i32 s0, 0x8000
	v_and_b32_sdwa v0, v0, s0 dst_sel:WORD_1 dst_unused:UNUSED_PAD src0_sel:DWORD src1_sel:DWORD
	s_nop 0
	v_or_b32_e32 v0, v2, v0
	s_setpc_b64 s[30:31]
.Lfunc_end4:
	.size	__extendhfsf2, .Lfunc_end4-__extendhfsf2
	.set __extendhfsf2.num_vgpr, 6
	.set __extendhfsf2.num_agpr, 0
	.set __extendhfsf2.numbered_sgpr, 32
	.set __extendhfsf2.num_named_barrier, 0
	.set __extendhfsf2.private_seg_size, 0
	.set __extendhfsf2.uses_vcc, 1
	.set __extendhfsf2.uses_flat_scratch, 0
	.set __extendhfsf2.has_dyn_sized_stack, 0
	.set __extendhfsf2.has_recursion, 0
	.set __extendhfsf2.has_indirect_call, 0
	.text
	.p2alignl 6, 3212836864
	.fill 256, 4, 3212836864
	.section	.AMDGPU.gpr_maximums,"",@progbits
	.set amdgpu.max_num_vgpr, 6
	.set amdgpu.max_num_agpr, 0
	.set amdgpu.max_num_sgpr, 32
	.set amdgpu.max_num_named_barrier, 0
	.text
	.section	".note.GNU-stack","",@progbits
---
amdhsa.kernels:
  - .agpr_count:     0
    .args:
      - .actual_access:  write_only
        .address_space:  global
        .name:           T_add_intermediate
        .offset:         0
        .size:           8
        .value_kind:     global_buffer
      - .actual_access:  read_only
        .address_space:  global
        .name:           lv10
        .offset:         8
        .size:           8
        .value_kind:     global_buffer
      - .actual_access:  read_only
        .address_space:  global
        .name:           model_mlp_down_weight_dense
        .offset:         16
        .size:           8
        .value_kind:     global_buffer
      - .actual_access:  read_only
        .address_space:  global
        .name:           x
        .offset:         24
        .size:           8
        .value_kind:     global_buffer
    .group_segment_fixed_size: 0
    .kernarg_segment_align: 8
    .kernarg_segment_size: 32
    .language:       OpenCL C
    .language_version:
      - 2
      - 0
    .max_flat_workgroup_size: 256
    .name:           fused_linear1_cast1_add_kernel
    .private_segment_fixed_size: 0
    .sgpr_count:     14
    .sgpr_spill_count: 0
    .symbol:         fused_linear1_cast1_add_kernel.kd
    .uses_dynamic_stack: false
    .vgpr_count:     9
    .vgpr_spill_count: 0
    .wavefront_size: 64
  - .agpr_count:     0
    .args:
      - .actual_access:  write_only
        .address_space:  global
        .name:           T_multiply_intermediate
        .offset:         0
        .size:           8
        .value_kind:     global_buffer
      - .actual_access:  read_only
        .address_space:  global
        .name:           lv7
        .offset:         8
        .size:           8
        .value_kind:     global_buffer
      - .actual_access:  read_only
        .address_space:  global
        .name:           model_mlp_up_weight_dense
        .offset:         16
        .size:           8
        .value_kind:     global_buffer
    .group_segment_fixed_size: 512
    .kernarg_segment_align: 8
    .kernarg_segment_size: 24
    .language:       OpenCL C
    .language_version:
      - 2
      - 0
    .max_flat_workgroup_size: 256
    .name:           fused_linear_cast_silu_kernel
    .private_segment_fixed_size: 0
    .sgpr_count:     18
    .sgpr_spill_count: 0
    .symbol:         fused_linear_cast_silu_kernel.kd
    .uses_dynamic_stack: false
    .vgpr_count:     6
    .vgpr_spill_count: 0
    .wavefront_size: 64
  - .agpr_count:     0
    .args:
      - .actual_access:  read_only
        .address_space:  global
        .name:           model_norm_weight_dense
        .offset:         0
        .size:           8
        .value_kind:     global_buffer
      - .actual_access:  write_only
        .address_space:  global
        .name:           rms_norm
        .offset:         8
        .size:           8
        .value_kind:     global_buffer
      - .actual_access:  read_only
        .address_space:  global
        .name:           x
        .offset:         16
        .size:           8
        .value_kind:     global_buffer
    .group_segment_fixed_size: 4
    .kernarg_segment_align: 8
    .kernarg_segment_size: 24
    .language:       OpenCL C
    .language_version:
      - 2
      - 0
    .max_flat_workgroup_size: 256
    .name:           rms_norm_kernel
    .private_segment_fixed_size: 0
    .sgpr_count:     12
    .sgpr_spill_count: 0
    .symbol:         rms_norm_kernel.kd
    .uses_dynamic_stack: false
    .vgpr_count:     9
    .vgpr_spill_count: 0
    .wavefront_size: 64
amdhsa.target:   amdgcn-amd-amdhsa-hcc-gfx942
  - 1
  - 2
...
	.end_amdgpu_metadata
