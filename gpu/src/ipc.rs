//! Another process's GPU memory, opened from the handle `cudaIpcGetMemHandle` gave it: what a
//! client registers through Triton's CUDA shared-memory extension, so its input tensors are read
//! from (and outputs written to) its own device buffers instead of travelling in the request.
//!
//! The runtimes take host tensors, so a read is one device-to-host copy and a write one
//! host-to-device copy, with no copy through the network stack. Every driver call is behind
//! [`cudarc::driver::sys::is_culib_present`], as in [`crate::cuda`].

use std::ffi::{c_char, c_uint};

use cudarc::driver::{result, sys};

/// Bytes of a `cudaIpcMemHandle_t`.
pub const HANDLE_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IpcError {
    #[error("a CUDA IPC handle is {HANDLE_BYTES} bytes, not {0}")]
    Handle(usize),
    #[error("no CUDA driver (libcuda.so not found)")]
    NoDriver,
    #[error("CUDA device {ordinal}: {reason}")]
    Driver { ordinal: i32, reason: String },
    #[error("bytes {offset}..{end} are past the region's {size}")]
    OutOfBounds {
        offset: usize,
        end: usize,
        size: usize,
    },
}

/// An opened IPC region on one device, closed on drop.
#[derive(Debug)]
pub struct IpcMemory {
    ordinal: i32,
    device: sys::CUdevice,
    context: sys::CUcontext,
    pointer: sys::CUdeviceptr,
    size: usize,
}

// SAFETY: the context and device pointer are handles the driver accepts from any thread once
// the context is made current there, which every method does first.
unsafe impl Send for IpcMemory {}
// SAFETY: as for Send; the driver serialises copies on the context's default stream.
unsafe impl Sync for IpcMemory {}

impl IpcMemory {
    /// Opens the `size` bytes that `handle` names on CUDA device `ordinal`.
    pub fn open(handle: &[u8], ordinal: i32, size: usize) -> Result<Self, IpcError> {
        if handle.len() != HANDLE_BYTES {
            return Err(IpcError::Handle(handle.len()));
        }
        // SAFETY: only tries to dlopen the library's candidate names; calls nothing in it.
        if !unsafe { sys::is_culib_present() } {
            return Err(IpcError::NoDriver);
        }
        let fail = |e: result::DriverError| IpcError::Driver {
            ordinal,
            reason: e.to_string(),
        };
        result::init().map_err(fail)?;
        let device = result::device::get(ordinal).map_err(fail)?;
        // SAFETY: `device` came from `device::get`.
        let context = unsafe { result::primary_ctx::retain(device) }.map_err(fail)?;
        let mut raw = sys::CUipcMemHandle {
            reserved: [0; HANDLE_BYTES],
        };
        for (to, from) in raw.reserved.iter_mut().zip(handle) {
            *to = *from as c_char;
        }
        let mut pointer = 0;
        let flags = sys::CUipcMem_flags_enum::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as c_uint;
        // SAFETY: the context was retained for this device; `pointer` is a live local.
        let opened = unsafe {
            result::ctx::set_current(context)
                .and_then(|()| sys::cuIpcOpenMemHandle_v2(&mut pointer, raw, flags).result())
        };
        if let Err(e) = opened {
            // SAFETY: releases the retain above, for the same device.
            let _ = unsafe { result::primary_ctx::release(device) };
            return Err(fail(e));
        }
        Ok(Self {
            ordinal,
            device,
            context,
            pointer,
            size,
        })
    }

    /// The CUDA device the region is on.
    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }

    fn check(&self, offset: usize, len: usize) -> Result<sys::CUdeviceptr, IpcError> {
        let end = offset.saturating_add(len);
        if end > self.size {
            return Err(IpcError::OutOfBounds {
                offset,
                end,
                size: self.size,
            });
        }
        Ok(self.pointer + offset as u64)
    }

    fn driver(&self, e: result::DriverError) -> IpcError {
        IpcError::Driver {
            ordinal: self.ordinal,
            reason: e.to_string(),
        }
    }

    /// Copies `out.len()` bytes at `offset` of the region into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), IpcError> {
        let source = self.check(offset, out.len())?;
        // SAFETY: `source..source + out.len()` lies in the opened region (checked above),
        // and the context it was opened in is made current first.
        unsafe {
            result::ctx::set_current(self.context)
                .and_then(|()| result::memcpy_dtoh_sync(out, source))
        }
        .map_err(|e| self.driver(e))
    }

    /// Copies `data` to `offset` of the region.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), IpcError> {
        let target = self.check(offset, data.len())?;
        // SAFETY: as in `read`.
        unsafe {
            result::ctx::set_current(self.context)
                .and_then(|()| result::memcpy_htod_sync(target, data))
        }
        .map_err(|e| self.driver(e))
    }
}

impl Drop for IpcMemory {
    fn drop(&mut self) {
        // SAFETY: the pointer was opened in this context, for this device, and is closed
        // once; the retain of `open` is released once.
        unsafe {
            let _ = result::ctx::set_current(self.context);
            let _ = sys::cuIpcCloseMemHandle(self.pointer).result();
            let _ = result::primary_ctx::release(self.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_of_the_wrong_size_is_refused_before_any_driver_call() {
        assert_eq!(
            IpcMemory::open(&[0; 8], 0, 64).unwrap_err(),
            IpcError::Handle(8)
        );
    }

    #[test]
    fn without_a_driver_opening_says_so() {
        // SAFETY: as in `open`.
        if unsafe { sys::is_culib_present() } {
            eprintln!("skipped: this machine has a CUDA driver");
            return;
        }
        assert_eq!(
            IpcMemory::open(&[0; HANDLE_BYTES], 0, 64).unwrap_err(),
            IpcError::NoDriver
        );
    }
}
