extern "C" __global__ void __launch_bounds__(512) fused_linear1_cast1_add_kernel(half* __restrict__ T_add_intermediate_ptr, half* __restrict__ lv10_ptr, half* __restrict__ model_mlp_down_weight_dense_ptr, half* __restrict__ x_ptr) {
  __shared__ alignas(64) half lv10_shared_ptr[128];
  alignas(64) float linear_intermediate_rf_local_ptr[4];
  alignas(64) half model_mlp_down_weight_dense_local_ptr[4];
  alignas(64) float linear_intermediate_rf_local_ptr_1[1];
  alignas(64) float red_buf0_ptr[1];
  for (int64_t ax2_0 = (int64_t)0; ax2_0 < (int64_t)1; ++ax2_0) {
    if (((int)threadIdx.y) < 4) {
      int cse_v2 = ((((int)threadIdx.y) * 32) + ((int)threadIdx.x));
      lv10_shared_ptr[((((int)threadIdx.y) * 32) + ((int)threadIdx.x))] = lv10_ptr[((((int)threadIdx.y) * 32) + ((int)threadIdx.x))];
    }
  }
  *(float4*)(linear_intermediate_rf_local_ptr + 0) = make_float4(0x0p+0f/*0.000000e+00*/, 0x0p+0f/*0.000000e+00*/, 0x0p+0f/*0.000000e+00*/, 0x0p+0f/*0.000000e+00*/);
  int cse_v1 = (((int)threadIdx.x) * 4);
  int cse_v4 = (((((int)blockIdx.x) * 2048) + (((int)threadIdx.y) * 128)) + (((int)threadIdx.x) * 4));
  *(half2*)(model_mlp_down_weight_dense_local_ptr + 0) = *(half2*)(model_mlp_down_weight_dense_ptr + (((((int)blockIdx.x) * 2048) + (((int)threadIdx.y) * 128)) + (((int)threadIdx.x) * 4)));
  *(half2*)(model_mlp_down_weight_dense_local_ptr + 2) = *(half2*)(model_mlp_down_weight_dense_ptr + ((((((int)blockIdx.x) * 2048) + (((int)threadIdx.y) * 128)) + (((int)threadIdx.x) * 4)) + 2));
  __syncthreads();
  float4 __1;
    float4 v_ = *(float4*)(linear_intermediate_rf_local_ptr + 0);
    float4 __2;
      float4 __3;
      half4 v__1 = *(half4*)(lv10_shared_ptr + (((int)threadIdx.x) * 4));
      __3.x = (float)(v__1.x);
      __3.y = (float)(v__1.y);
      __3.z = (float)(v__1.z);
      __3.w = (float)(v__1.w);
      float4 __4;
      half4 v__2 = *(half4*)(model_mlp_down_weight_dense_local_ptr + 0);
      __4.x = (float)(v__2.x);
      __4.y = (float)(v__2.y);
      __4.z = (float)(v__2.z);
      __4.w = (float)(v__2.w);
      __2.x = (__3.x*__4.x);
      __2.y = (__3.y*__4.y);
      __2.z = (__3.z*__4.z);
      __2.w = (__3.w*__4.w);
    __1.x = (v_.x+__2.x);
    __1.y = (v_.y+__2.y);
    __1.z = (v_.z+__2.z);
    __1.w = (v_.w+__2.w);
  *(float4*)(linear_intermediate_rf_local_ptr + 0) = __1;
  linear_intermediate_rf_local_ptr_1[0] = 0x0p+0f/*0.000000e+00*/;
  linear_intermediate_rf_local_ptr_1[0] = (linear_intermediate_rf_local_ptr_1[0] + linear_intermediate_rf_local_ptr[0]);
  linear_intermediate_rf_local_ptr_1[0] = (linear_intermediate_rf_local_ptr_1[0] + linear_intermediate_rf_local_ptr[1]);
  linear_intermediate_rf_local_ptr_1[0] = (linear_intermediate_rf_local_ptr_1[0] + linear_intermediate_rf_local_ptr[2]);
  linear_intermediate_rf_local_ptr_1[0] = (linear_intermediate_rf_local_ptr_1[0] + linear_intermediate_rf_local_ptr[3]);
  alignas(64) float t0_ptr[1];
  alignas(64) uint mask_ptr[1];
  red_buf0_ptr[0] = linear_intermediate_rf_local_ptr_1[0];
  mask_ptr[0] = __activemask();
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 16, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 8, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 4, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 2, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 1, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  red_buf0_ptr[0] = __shfl_sync(mask_ptr[0], red_buf0_ptr[0], (((int)threadIdx.y) * 32), 32);
  if (((int)threadIdx.x) == 0) {
    int cse_v3 = ((((int)blockIdx.x) * 16) + ((int)threadIdx.y));
    T_add_intermediate_ptr[((((int)blockIdx.x) * 16) + ((int)threadIdx.y))] = (x_ptr[((((int)blockIdx.x) * 16) + ((int)threadIdx.y))] + ((half)red_buf0_ptr[0]));
  }
}

extern "C" __global__ void __launch_bounds__(512) fused_linear_cast_silu_kernel(half* __restrict__ T_multiply_intermediate_ptr, half* __restrict__ lv7_ptr, half* __restrict__ model_mlp_up_weight_dense_ptr) {
  __shared__ alignas(64) half lv7_shared_ptr[64];
  alignas(64) float linear_intermediate_rf_local_ptr[2];
  alignas(64) half2 model_mlp_up_weight_dense_local_ptr[1];
  alignas(64) float linear_intermediate_rf_local_ptr_1[1];
  alignas(64) float red_buf0_ptr[1];
  for (int64_t ax2_0 = (int64_t)0; ax2_0 < (int64_t)1; ++ax2_0) {
    if (((int)threadIdx.y) < 2) {
      int cse_v2 = ((((int)threadIdx.y) * 32) + ((int)threadIdx.x));
      lv7_shared_ptr[((((int)threadIdx.y) * 32) + ((int)threadIdx.x))] = lv7_ptr[((((int)threadIdx.y) * 32) + ((int)threadIdx.x))];
    }
  }
  *(float2*)(linear_intermediate_rf_local_ptr + 0) = make_float2(0x0p+0f/*0.000000e+00*/, 0x0p+0f/*0.000000e+00*/);
  int cse_v1 = (((int)threadIdx.x) * 2);
  model_mlp_up_weight_dense_local_ptr[0] = *(half2*)(model_mlp_up_weight_dense_ptr + (((((int)blockIdx.x) * 1024) + (((int)threadIdx.y) * 64)) + (((int)threadIdx.x) * 2)));
  __syncthreads();
  float2 __1;
    float2 v_ = *(float2*)(linear_intermediate_rf_local_ptr + 0);
    float2 __2;
      float2 __3;
      half2 v__1 = *(half2*)(lv7_shared_ptr + (((int)threadIdx.x) * 2));
      __3.x = (float)(v__1.x);
      __3.y = (float)(v__1.y);
      float2 __4;
      half2 v__2 = model_mlp_up_weight_dense_local_ptr[0];
      __4.x = (float)(v__2.x);
      __4.y = (float)(v__2.y);
      __2.x = (__3.x*__4.x);
      __2.y = (__3.y*__4.y);
    __1.x = (v_.x+__2.x);
    __1.y = (v_.y+__2.y);
  *(float2*)(linear_intermediate_rf_local_ptr + 0) = __1;
  linear_intermediate_rf_local_ptr_1[0] = 0x0p+0f/*0.000000e+00*/;
  linear_intermediate_rf_local_ptr_1[0] = (linear_intermediate_rf_local_ptr_1[0] + linear_intermediate_rf_local_ptr[0]);
  linear_intermediate_rf_local_ptr_1[0] = (linear_intermediate_rf_local_ptr_1[0] + linear_intermediate_rf_local_ptr[1]);
  alignas(64) float t0_ptr[1];
  alignas(64) uint mask_ptr[1];
  red_buf0_ptr[0] = linear_intermediate_rf_local_ptr_1[0];
  mask_ptr[0] = __activemask();
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 16, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 8, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 4, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 2, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 1, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  red_buf0_ptr[0] = __shfl_sync(mask_ptr[0], red_buf0_ptr[0], (((int)threadIdx.y) * 32), 32);
  if (((int)threadIdx.x) == 0) {
    T_multiply_intermediate_ptr[((((int)blockIdx.x) * 16) + ((int)threadIdx.y))] = (((half)red_buf0_ptr[0]) * (__float2half_rn(0x1p+0f/*1.000000e+00*/) / (__float2half_rn(0x1p+0f/*1.000000e+00*/) + hexp((__float2half_rn(0x0p+0f/*0.000000e+00*/) - ((half)red_buf0_ptr[0]))))));
  }
}

extern "C" __global__ void __launch_bounds__(64) rms_norm_kernel(half* __restrict__ model_norm_weight_dense_ptr, half* __restrict__ rms_norm_ptr, half* __restrict__ x_ptr) {
  alignas(64) float rms_sumsq_rf_local_ptr[1];
  __shared__ alignas(64) float red_result_ptr[1];
  __shared__ alignas(64) float rms_sumsq_shared_ptr[1];
  rms_sumsq_rf_local_ptr[0] = 0x0p+0f/*0.000000e+00*/;
  rms_sumsq_rf_local_ptr[0] = (rms_sumsq_rf_local_ptr[0] + (((float)x_ptr[((int)threadIdx.x)]) * ((float)x_ptr[((int)threadIdx.x)])));
  __shared__ alignas(64) float red_buf_staging_ptr[2];
  alignas(64) float t0_ptr[1];
  alignas(64) uint mask_ptr[1];
  alignas(64) float red_buf0_ptr[1];
  alignas(64) float t0_ptr_1[1];
  alignas(64) uint mask_ptr_1[1];
  alignas(64) float red_buf0_ptr_1[1];
  red_buf0_ptr[0] = rms_sumsq_rf_local_ptr[0];
  mask_ptr[0] = __activemask();
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 16, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 8, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 4, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 2, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  t0_ptr[0] = __shfl_down_sync(mask_ptr[0], red_buf0_ptr[0], 1, 32);
  red_buf0_ptr[0] = (red_buf0_ptr[0] + t0_ptr[0]);
  if ((((int)threadIdx.x) % 32) == 0) {
    red_buf_staging_ptr[(((int)threadIdx.x) >> 5)] = red_buf0_ptr[0];
  }
  __syncthreads();
  if (((int)threadIdx.x) < 2) {
    red_buf0_ptr_1[0] = red_buf_staging_ptr[((int)threadIdx.x)];
  }
  mask_ptr_1[0] = __activemask();
  t0_ptr_1[0] = __shfl_down_sync(mask_ptr_1[0], red_buf0_ptr_1[0], 1, 32);
  red_buf0_ptr_1[0] = (red_buf0_ptr_1[0] + t0_ptr_1[0]);
  if (((int)threadIdx.x) == 0) {
    ((volatile float*)red_result_ptr)[0] = red_buf0_ptr_1[0];
  }
  __syncthreads();
  if (((int)threadIdx.x) == 0) {
    rms_sumsq_shared_ptr[0] = ((volatile float*)red_result_ptr)[0];
  }
  __syncthreads();
  rms_norm_ptr[((int)threadIdx.x)] = (((half)(((float)x_ptr[((int)threadIdx.x)]) * rsqrtf(((rms_sumsq_shared_ptr[0] / 0x1p+6f/*6.400000e+01*/) + 0x1.4f8b588e368f1p-17f/*1.000000e-05*/)))) * model_norm_weight_dense_ptr[((int)threadIdx.x)]);
}
